// Shared by the speak and watch pages: the token, the socket, acks with a
// timeout, ICE gathering, and plain-language status and errors.

export const ACK_TIMEOUT_MS = 20000;
export const ICE_GATHER_TIMEOUT_MS = 5000;

export function pageData() {
  const island = document.getElementById("page-data");
  return island ? JSON.parse(island.textContent) : {};
}

export function readToken() {
  const token = new URLSearchParams(window.location.search).get("token");
  return token && token.trim() ? token.trim() : null;
}

// What to tell a person for each error code (the server's message is added).
const FRIENDLY = {
  token_missing: "This link has no access token. Please open the invite link you received.",
  token_invalid: "This invite link is not valid. Please open the exact link you received.",
  token_expired: "Your invite has expired. Please ask the organizers for a new link.",
  forbidden: "Your invite does not allow this here.",
  not_found: "This forum or stream does not exist.",
  full: "This forum is full right now. Please try again in a few minutes.",
  too_many_seats: "This invite is already watching on other devices. Close one; the page will retry.",
  too_many_sources: "You already publish as many streams as allowed. Stop one first.",
  unavailable: "The server is busy or restarting. The page will retry.",
  timeout: "The server did not answer in time. The page will retry.",
  ice_failed: "The media connection could not be set up (a firewall may block UDP).",
  connection_lost: "The media connection was lost.",
};

// For these the friendly text says it all; for the others the server's message adds the specifics.
const SELF_EXPLANATORY = new Set(["token_missing", "token_invalid", "token_expired", "full", "unavailable", "timeout"]);

export function describe(error) {
  if (!error) return "Something went wrong.";
  const friendly = FRIENDLY[error.code];
  if (friendly && (SELF_EXPLANATORY.has(error.code) || !error.message)) return friendly;
  if (friendly) return `${friendly} (${error.message})`;
  return error.message || String(error);
}

export class ServerError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

export function isFatal(error) {
  return ["token_missing", "token_invalid", "token_expired", "forbidden", "not_found"].includes(error && error.code);
}

// One socket.io connection with the token as auth; socket.io reconnects by itself.
export function connect(token) {
  // global `io` comes from /static/vendor/socket.io.min.js (npm's socket.io-client)
  return window.io({
    auth: token ? { token } : {},
    // default transports: long-polling first, then the upgrade; works behind strict venue proxies
    reconnectionDelay: 1000,
    reconnectionDelayMax: 10000,
  });
}

// Emit with an ack; rejects with ServerError on {"error": ...} or a timeout.
export function request(socket, event, payload, timeoutMs = ACK_TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    socket.timeout(timeoutMs).emit(event, payload, (err, ack) => {
      if (err) return reject(new ServerError("timeout", `no answer to ${event} in ${timeoutMs / 1000} s`));
      if (ack && ack.error) return reject(new ServerError(ack.error.code, ack.error.message));
      resolve(ack);
    });
  });
}

// The server takes one complete offer (no trickle): wait until gathering ends.
export function gatherIce(pc, timeoutMs = ICE_GATHER_TIMEOUT_MS) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, timeoutMs); // send what we have rather than hang
    pc.addEventListener("icegatheringstatechange", check);
  });
}

export function setPill(element, kind, text) {
  element.className = `pill ${kind}`;
  element.textContent = text;
}

export function showMessage(element, kind, text) {
  if (!text) {
    element.hidden = true;
    element.textContent = "";
    return;
  }
  element.className = `message ${kind}`;
  element.textContent = text;
  element.hidden = false;
}

export function onAirText(program) {
  if (!program || !program.program) return "Slate — the session will start soon";
  if (program.source && program.source.name) return program.source.name;
  return "Live";
}

export function viewersText(counts) {
  if (!counts) return "—";
  return String(counts.viewers);
}

// Exponential backoff with a cap and a little jitter, so 1,000 guests do not retry in step.
export function backoff(attempt, baseMs = 1000, maxMs = 15000) {
  const ms = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt));
  return ms * (0.8 + Math.random() * 0.4);
}

// Put H.264 first when the browser can send/receive it; restreaming then needs no transcode.
export function preferH264(transceiver, side = "sender") {
  const api = side === "receiver" ? window.RTCRtpReceiver : window.RTCRtpSender;
  const caps = (api && api.getCapabilities && api.getCapabilities("video")) || null;
  if (!caps || !transceiver.setCodecPreferences) return;
  const h264 = caps.codecs.filter((c) => c.mimeType.toLowerCase() === "video/h264");
  if (!h264.length) return;
  // baseline/constrained-baseline first: what every receiver decodes
  h264.sort((a, b) => baselineRank(a) - baselineRank(b));
  const rest = caps.codecs.filter((c) => c.mimeType.toLowerCase() !== "video/h264");
  try {
    transceiver.setCodecPreferences([...h264, ...rest]);
  } catch (e) {
    console.warn("setCodecPreferences failed", e);
  }
}

function baselineRank(codec) {
  const fmtp = codec.sdpFmtpLine || "";
  const baseline = /profile-level-id=42e0|profile-level-id=4200/i.test(fmtp) ? 0 : 2;
  const mode = /packetization-mode=1/.test(fmtp) ? 0 : 1;
  return baseline + mode;
}
