// A speaker sends a recording of their talk from their invite link:
// a resumable tus upload (tus-js-client) with their own token; the
// server converts it and, for a recorded speaker, plays it in their slot.
import { pageData, readToken, t } from "/static/js/common.js";

const form = document.getElementById("send-recording");
const status = document.getElementById("recording-status");
const forumId = pageData().forum.id;
const token = readToken();

async function followJob(jobId) {
  for (;;) {
    const response = await fetch(`/api/forums/${encodeURIComponent(forumId)}/jobs/${encodeURIComponent(jobId)}`,
      { headers: { Authorization: `Bearer ${token}` } });
    const job = await response.json();
    if (!response.ok) { status.textContent = job.error ? job.error.message : `HTTP ${response.status}`; return; }
    if (job.state === "done") { status.textContent = t("upload.done"); return; }
    if (job.state === "failed") { status.textContent = t("upload.refused", { why: job.error }); return; }
    const eta = job.eta_s != null ? t("upload.eta", { s: Math.round(job.eta_s) }) : "";
    status.textContent = t("upload.preparing", { pct: job.percent, eta });
    await new Promise((resolve) => { setTimeout(resolve, 2000); });
  }
}

function send(event) {
  event.preventDefault();
  const file = document.getElementById("recording-file").files[0];
  if (!file || !window.tus) return;
  let jobId = null;
  const upload = new window.tus.Upload(file, {
    endpoint: `/api/forums/${encodeURIComponent(forumId)}/uploads`,
    headers: { Authorization: `Bearer ${token}` },
    metadata: { filename: file.name },
    chunkSize: 16 * 1024 * 1024,
    retryDelays: [0, 1000, 3000, 5000, 10000, 20000],
    removeFingerprintOnSuccess: true,
    onProgress: (sent, total) => { status.textContent = t("upload.sending", { pct: Math.floor((sent / total) * 100) }); },
    onAfterResponse: (_request, response) => { jobId = response.getHeader("Forumcast-Job") || jobId; },
    onError: (error) => {
      let message = String(error.message || error);
      try { message = JSON.parse(error.originalResponse.getBody()).error.message; } catch (_) { /* not ours */ }
      status.textContent = t("upload.failed", { why: message });
    },
    onSuccess: () => { if (jobId) followJob(jobId); else status.textContent = t("upload.sent"); },
  });
  upload.findPreviousUploads().then((previous) => {
    if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
    upload.start();
  });
}

if (form) form.addEventListener("submit", send);
