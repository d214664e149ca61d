// Shared by every page (lobby, watch, speak, control, status): the token,
// the socket, acks with a timeout, ICE gathering, the receive-only peer
// connection, plain-language status and errors (in the page's language,
// i18n.js).
import { has, phraseOf, t } from "./i18n.js";
import { readToken } from "./invite.js";

export { readToken };
export { t, language, localized, applyI18n, mountLanguageSwitch, onLanguageChange } from "./i18n.js";

export const ACK_TIMEOUT_MS = 20000;
export const ICE_GATHER_TIMEOUT_MS = 5000;

export function pageData() {
  const island = document.getElementById("page-data");
  return island ? JSON.parse(island.textContent) : {};
}

// For these the friendly text says it all; for the others the server's message adds the specifics.
const SELF_EXPLANATORY = new Set(["token_missing", "token_invalid", "token_expired", "full", "unavailable", "timeout"]);

// What to tell a person for each error code (i18n "error.<code>"; the server's message is added).
export function describe(error) {
  if (!error) return t("error.generic");
  const key = `error.${error.code}`;
  const friendly = has(key) ? t(key) : null;
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

// When this page's node dies: socket.io cannot reconnect for afterMs, so the
// page asks another node of the cluster where to go (its placement: the
// answer lists every node's URL, learnt while this node was up; the page's
// CSP lets it ask them) and opens itself there. `resumeHash` ("" for none)
// is put on the new page's URL (the speak page goes live again by itself).
// Returns { learn(), disconnected(reason), connected(), state }.
export function relocator(forumId, socket, { afterMs = 1500, isFatal: stop = () => false, resumeHash = () => "" } = {}) {
  const state = { nodes: [], timer: null, tries: 0, relocatedTo: null };
  const placementAt = (base) => {
    const token = readToken();
    return fetch(new URL(`/api/forums/${encodeURIComponent(forumId)}/placement`, base), {
      headers: token ? { Authorization: `Bearer ${token}` } : {}, cache: "no-store",
    }).then((response) => (response.ok ? response.json() : null));
  };
  async function relocate() {
    clearTimeout(state.timer);
    if (stop() || socket.connected) return;
    for (const node of state.nodes) {
      if (new URL(node).origin === location.origin) continue;
      try {
        const placed = await placementAt(node);
        if (!placed) continue;
        const there = new URL(location.pathname + location.search, placed.url);
        if (there.origin === location.origin) break; // this node is back: socket.io reconnects here
        there.hash = resumeHash();
        state.relocatedTo = there.href;
        window.location.assign(there.href);
        return;
      } catch (error) { /* that node is gone too: the next */ }
    }
    state.timer = setTimeout(relocate, backoff(state.tries++, 1000, 10000));
  }
  return {
    state,
    async learn() {
      try {
        const placed = await placementAt(location.origin);
        if (placed && Array.isArray(placed.nodes)) state.nodes = placed.nodes;
      } catch (error) { /* a single node, or none answering: nowhere else to go */ }
    },
    disconnected(reason) {
      clearTimeout(state.timer);
      if (reason !== "io client disconnect") state.timer = setTimeout(relocate, afterMs);
    },
    connected() {
      clearTimeout(state.timer);
      state.tries = 0;
    },
  };
}

// Emit with an ack; rejects with ServerError on {"error": ...} or a timeout.
export function request(socket, event, payload, timeoutMs = ACK_TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    socket.timeout(timeoutMs).emit(event, payload, (err, ack) => {
      if (err) return reject(new ServerError("timeout", `no answer to ${event} in ${timeoutMs / 1000} s`));
      if (ack && ack.error && ack.error.code === "moved" && ack.error.url) {
        // another node hosts this forum: the same page (and token) there
        window.location.assign(new URL(location.pathname + location.search + location.hash, ack.error.url).href);
      }
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

// The refusals every page handles alike: a connection the server refused
// (its reason in error.data: fatal) or could not reach (socket.io retries),
// and an "error" push (token_expired while connected...).
export function wireRefusals(socket, { fail, status, message }) {
  socket.on("connect_error", (error) => {
    if (error.data && error.data.code) return fail(error.data);
    setPill(status, "warn", t("watch.unreachable"));
  });
  socket.on("error", (payload) => {
    const error = payload && payload.error;
    if (isFatal(error)) fail(error); else showMessage(message, "warn", describe(error));
  });
}

// A state word from the server in the page's language ("ctl.state.live"...); an unknown one as sent.
export function stateWord(prefix, value) {
  const key = `${prefix}.${value}`;
  const text = t(key);
  return text === key ? String(value) : text;
}

export function setPill(element, kind, text) {
  element.className = `pill ${kind}`;
  setText(element, text);
}

// Text set by the page's state. One phrase of the dictionary keeps its key
// (and values), so a language switch says it again in the new language;
// anything else (a name, a server's message) stays as it is, and the
// element's initial data-i18n words never come back over it.
export function setText(element, text) {
  const phrase = text ? phraseOf(text) : undefined;
  if (phrase) {
    element.dataset.i18n = phrase[0];
    if (Object.keys(phrase[1]).length) element.dataset.i18nVars = JSON.stringify(phrase[1]);
    else delete element.dataset.i18nVars;
  } else {
    delete element.dataset.i18n;
    delete element.dataset.i18nVars;
  }
  element.textContent = text;
}

export function showMessage(element, kind, text) {
  if (!text) {
    element.hidden = true;
    setText(element, "");
    return;
  }
  element.className = `message ${kind}`;
  setText(element, text);
  element.hidden = false;
}

export function onAirText(program) {
  if (!program || !program.program) return t("watch.slate");
  if (program.source && program.source.name) return program.source.name;
  return t("watch.live");
}

export function viewersText(counts) {
  if (!counts) return "—";
  return String(counts.viewers);
}

// A receive-only peer for a forum's program or one source: video (H.264
// first) and audio; `onStream(stream)` at each track. The caller sends the
// offer (after gatherIce) with `watch` and applies the answer.
export function receivePeer(iceServers, onStream) {
  const pc = new RTCPeerConnection({ iceServers: iceServers || [] }); // from the join ack
  preferH264(pc.addTransceiver("video", { direction: "recvonly" }), "receiver");
  pc.addTransceiver("audio", { direction: "recvonly" });
  const stream = new MediaStream();
  pc.ontrack = (event) => { stream.addTrack(event.track); onStream(stream); };
  return pc;
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

// --- times: agenda times in a named zone (the venue's or the viewer's) -------------

export const LOCAL_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone;

// "14:30" for an ISO time in an IANA zone
export function clockIn(iso, timeZone) {
  return new Intl.DateTimeFormat("en-GB", { hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZone })
    .format(new Date(iso));
}

// "Asia/Shanghai" -> "Shanghai" (the city names the zone well enough on a label)
export function zoneLabel(timeZone) {
  return String(timeZone || "").split("/").pop().replace(/_/g, " ");
}

// "1 d 02:03:04" / "02:03:04" for a duration in ms (negative counts as 0)
export function countdown(ms) {
  const total = Math.max(0, Math.round(ms / 1000));
  const days = Math.floor(total / 86400);
  const clock = [Math.floor((total % 86400) / 3600), Math.floor((total % 3600) / 60), total % 60]
    .map((n) => String(n).padStart(2, "0")).join(":");
  return days ? `${days} d ${clock}` : clock;
}
