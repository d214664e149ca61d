// The watch page's fallback player: the forum's HLS output (RFC 8216,
// /hls/{forum}/index.m3u8, the viewer token on the playlist) played with
// hls.js over Media Source Extensions, or natively where the browser plays
// HLS itself (Safari, iOS). hls.js is the committed vendor file, loaded
// only when a page falls back (most guests never need its 380 KB).

const HLS_SCRIPT = "/static/vendor/hls.light.min.js";
const RETRY_MS = 2000; // the server answers 503 + Retry-After: 2 while the first segments are made

let loading = null;

function loadHlsJs() {
  if (window.Hls) return Promise.resolve(window.Hls);
  if (!loading) {
    loading = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = HLS_SCRIPT;
      script.onload = () => resolve(window.Hls);
      script.onerror = () => { loading = null; reject(new Error("the HLS player could not be loaded")); };
      document.head.append(script);
    });
  }
  return loading;
}

export function playlistUrl(forumId, token) {
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  return `/hls/${encodeURIComponent(forumId)}/index.m3u8${query}`;
}

// Play `url` in `video`; `onError(text)` for what the viewer should know
// (the player retries by itself). Returns {stop(), engine: "hls.js"|"native"}.
export async function playHls(video, url, onError = () => {}) {
  video.srcObject = null; // the WebRTC stream, if any
  const Hls = await loadHlsJs().catch(() => null);
  if (Hls && Hls.isSupported()) {
    let hls = null;
    let stopped = false;
    let timer = null;
    const start = () => {
      if (stopped) return;
      // no worker: the pages' CSP allows scripts from 'self' only, not blob: workers
      hls = new Hls({ enableWorker: false, liveSyncDurationCount: 3, backBufferLength: 30 });
      hls.on(Hls.Events.ERROR, (_event, data) => {
        if (!data.fatal) return;
        if (data.type === Hls.ErrorTypes.MEDIA_ERROR) { hls.recoverMediaError(); return; }
        // the playlist is not there yet (503 while starting) or the network dropped: start over shortly
        onError(data.details || data.type);
        hls.destroy();
        hls = null;
        timer = setTimeout(start, RETRY_MS);
      });
      hls.loadSource(url);
      hls.attachMedia(video);
    };
    start();
    video.play().catch(() => {});
    return {
      engine: "hls.js",
      stop() { stopped = true; clearTimeout(timer); if (hls) hls.destroy(); hls = null; },
    };
  }
  if (video.canPlayType("application/vnd.apple.mpegurl")) {
    video.src = url;
    video.play().catch(() => {});
    return { engine: "native", stop() { video.removeAttribute("src"); video.load(); } };
  }
  throw new Error("this browser plays neither WebRTC nor HLS");
}
