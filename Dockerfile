# syntax=docker/dockerfile:1
# Tether: build a release binary, ship it on distroless (glibc + libgcc, no shell), non-root.

FROM rust:1.95-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml/Cargo.lock change.
# Placeholder targets (lib + bin, as declared in Cargo.toml) let cargo compile the dependency graph.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# The real sources. Touch the crate roots so cargo never mistakes the placeholders' build for them.
COPY . .
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin tether \
    && install -D -m 0755 target/release/tether /out/tether

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tether /usr/local/bin/tether
COPY config/tether.yaml /etc/tether/tether.yaml
USER 65532:65532
# 8080: public listener (cloud, phones, browsers). 9090: admin (/livez, /readyz, /metrics).
# The local listener (127.0.0.1:8081) is loopback-only and not exposed.
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/tether"]
CMD ["run", "--config", "/etc/tether/tether.yaml"]
