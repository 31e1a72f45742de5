// Minimal MentraOS app built on the published @mentra/sdk (2.1.29), unmodified.
// Used as the "unmodified third-party app server" behind Tether in end-to-end tests.
//
// Environment:
//   PORT              listen port (default 7010)
//   PACKAGE_NAME      app package name (default com.example.tether.sdkapp)
//   MENTRAOS_API_KEY  API key sent in tpa_connection_init (default: 64 zeros)
//   SUBSCRIBE_AUDIO   "1" to also subscribe to audio_chunk and count chunks
//   LOG_LEVEL         level of the SDK's own pino logger (default "silent";
//                     "warn" or "debug" to see what the SDK is doing)
//
// Extra route: GET /received -> what each session got (see README.md).

// The SDK builds its logger at import time and adds a remote log transport when
// this variable is set; make sure no log record can leave the machine.
delete process.env.BETTERSTACK_SOURCE_TOKEN;
delete process.env.BETTERSTACK_ENDPOINT;

const { AppServer, logger } = await import("@mentra/sdk");

// The SDK hard-codes its logger to "debug"; children inherit the level that the
// root has when they are created, so set it before constructing the server.
logger.level = process.env.LOG_LEVEL || "silent";

const PORT = Number.parseInt(process.env.PORT || "7010", 10);
const PACKAGE_NAME = process.env.PACKAGE_NAME || "com.example.tether.sdkapp";
const API_KEY = process.env.MENTRAOS_API_KEY || "0".repeat(64);
const SUBSCRIBE_AUDIO = process.env.SUBSCRIBE_AUDIO === "1";

/** sessionId -> { transcriptions: [], audioChunks, displays, starts, stops: [] } */
const received = new Map();

function recordFor(sessionId) {
  let rec = received.get(sessionId);
  if (!rec) {
    rec = { transcriptions: [], audioChunks: 0, displays: 0, starts: 0, stops: [] };
    received.set(sessionId, rec);
  }
  return rec;
}

class TetherSdkApp extends AppServer {
  async onSession(session, sessionId, userId) {
    const rec = recordFor(sessionId);
    rec.starts += 1;

    session.events.onTranscription((data) => {
      if (!data || !data.isFinal) return;
      const seq = data.seq !== undefined && data.seq !== null ? data.seq : data.text;
      rec.transcriptions.push(seq);
      session.layouts.showTextWall("seen " + seq);
      rec.displays += 1;
    });

    if (SUBSCRIBE_AUDIO) {
      session.events.onAudioChunk(() => {
        rec.audioChunks += 1;
      });
    }
  }

  async onStop(sessionId, userId, reason) {
    recordFor(sessionId).stops.push(String(reason));
    await super.onStop(sessionId, userId, reason);
  }
}

const server = new TetherSdkApp({
  packageName: PACKAGE_NAME,
  apiKey: API_KEY,
  port: PORT,
  healthCheck: true,
});

server.getExpressApp().get("/received", (_req, res) => {
  res.json({ sessions: Object.fromEntries(received) });
});

// start() resolves only after the SDK's start-up version check settles. That
// check normally fails at once (see README.md), but an HTTP proxy that accepts
// the CONNECT and then drops it makes it hang, so also announce readiness as
// soon as our own port answers.
let announced = false;
function announce() {
  if (announced) return;
  announced = true;
  process.stdout.write(`sdk-app listening on ${PORT}\n`);
}
const poll = setInterval(() => {
  fetch(`http://127.0.0.1:${PORT}/health`)
    .then((r) => { if (r.ok) { clearInterval(poll); announce(); } })
    .catch(() => {});
}, 250);
await server.start();
clearInterval(poll);
announce();
