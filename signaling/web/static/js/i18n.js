// The pages' words in English and Chinese, and the language choice every
// page shares: remembered in localStorage; else the invite's language (the
// token's `lang` claim); else the browser's (navigator.language).
// Elements carry data-i18n="key" (their text) or data-i18n-title="key".

import { tokenClaims } from "./invite.js";

export const LANGUAGES = ["en", "zh"];
const STORAGE_KEY = "forumcast.lang";

const DICT = {
  en: {
    "lang.switch": "中文", "lang.switch.title": "切换到中文",
    "lobby.kicker": "Online forums",
    "lobby.hint": "Choose a forum to watch. Your invite link opens the forums it grants.",
    "lobby.yours": "Your forums", "lobby.others": "Other forums (not open to your invite)",
    "lobby.agenda": "Agenda", "lobby.live": "Live now", "lobby.next": "Next",
    "lobby.nothing": "Nothing on air", "lobby.watching": "{n} watching",
    "lobby.yourTime": "your time", "lobby.venueTime": "venue",
    "lobby.closed": "not open to your invite",
    "watch.connecting": "Connecting…", "watch.placeholder": "Connecting to the live stream…",
    "watch.nowOnAir": "Now on air", "watch.watching": "Watching online", "watch.stream": "Stream",
    "watch.allForums": "All forums", "watch.sound": "Turn sound on", "watch.mute": "Mute",
    "watch.session": "Session", "watch.nextUp": "Next", "watch.speakers": "Speakers",
    "watch.notStarted": "The forum starts in {t}", "watch.break": "On a break — next: {title} in {t}",
    "watch.ended": "This forum has ended. Thank you for watching.",
    "watch.reconnecting": "Reconnecting…", "watch.live": "Live",
    "watch.fullscreen": "Fullscreen", "watch.pip": "Picture in picture",
    "watch.fullscreenShort": "Full screen", "watch.pipShort": "PiP", "watch.volume": "Volume",
    "watch.unsteady": "Connection unsteady…", "watch.connectingStream": "Connecting to the stream…",
    "watch.cannot": "Cannot continue", "watch.cannotShow": "The stream cannot be shown.",
    "watch.serverReconnecting": "Reconnecting to the server…",
    "watch.unreachable": "Cannot reach the server — retrying…", "watch.retryIn": "Retrying in {s} s.",
    "watch.slate": "Slate (no one on air)", "watch.onAirPrefix": "On air: {name}",
    "chat.title": "Chat", "qa.title": "Questions", "chat.send": "Send", "qa.ask": "Ask",
    "chat.placeholder": "Write a message", "qa.placeholder": "Ask the speakers a question",
    "demo.badge": "Demo", "demo.note": "the sample agenda, moved to run now",
    "qa.sent": "Your question went to the moderators.", "qa.approved": "Approved questions",
    "qa.queue": "Questions (Q&A queue)", "qa.approve": "Approve", "qa.dismiss": "Dismiss",
    "qa.answered": "Answered", "qa.empty": "No questions yet.",
    "speak.kicker": "remote speaker", "speak.starting": "Starting…",
    "speak.nowOnAir": "Now on air", "speak.watching": "Watching", "speak.connection": "Connection",
    "speak.goLive": "Go live", "speak.stop": "Stop sending", "speak.devices": "Your devices",
    "speak.camera": "Camera", "speak.mic": "Microphone", "speak.onAir": "On air",
    "speak.preview": "Your camera (only you see this preview)",
    "speak.waitingCamera": "Waiting for your camera and microphone…",
    "speak.meterHint": "The bar moves when the microphone hears you.",
    "speak.youAreOnAir": "You are on air", "speak.inPreview": "In preview — you go on air next",
    "speak.sending": "Sending — waiting to go on air", "speak.connectingCamera": "Connecting your camera…",
    "speak.notSending": "not sending", "speak.readyNotSending": "Ready — not sending", "speak.ready": "Ready — press Go live",
    "speak.cameraDenied": "The browser was not allowed to use your camera and microphone. Allow them (the icon in the address bar) and reload the page.",
    "speak.cameraMissing": "No camera or microphone was found. Connect one and reload the page.",
    "speak.cameraFailed": "Your camera or microphone could not be opened ({why}).",
    "speak.step1": "Allow the browser to use your camera and microphone.",
    "speak.step2": "Check your picture on the left and that the microphone bar moves when you speak.",
    "speak.step3": "Press Go live. You are on air when the operators take you (or at once, when the forum follows the newest speaker); the red badge shows when you are.",
    "speak.keepOpen": "Keep this tab open while you speak. If the network drops, the page reconnects by itself.",
    "speak.notConnected": "not connected",
    "speak.recordingHint": "A video or just your voice (a picture is added). If the upload stops, choose the same file again: it goes on where it stopped.",
    "speak.before": "Before you go live", "speak.recording": "Or send a recording", "speak.send": "Send",
    "watch.hls": "Watching over HLS", "watch.hlsStarting": "Switching to HLS…",
    "watch.hlsWhy": "The low-latency connection could not be made (a firewall may block it): watching over HLS, a few seconds behind.",
    "watch.hlsBlocked": "This browser does not allow WebRTC: watching over HLS, a few seconds behind.",
    "watch.hlsInstead": "Watching over HLS instead, a few seconds behind.",
    "error.unsupported": "This browser cannot play the stream.",
    "speak.air.offline": "Not sending — only you see your camera",
    "speak.air.green-room": "Green room — the operators see and hear you; guests do not",
    "speak.air.preview": "Standby — the operators are about to put you on air",
    "speak.air.on-air": "ON AIR — guests see and hear you",
    "speak.returnWaiting": "Connecting to the program…", "speak.returnFeed": "Program: what guests see now",
    "speak.returnHear": "Hear it (headphones)", "speak.returnMute": "Mute the program",
    "speak.schedule": "Schedule", "speak.network": "Network check", "speak.backstage": "Message the operators",
    "speak.net.checking": "Checking…", "speak.net.good": "Network good", "speak.net.fair": "Network fair",
    "speak.net.poor": "Network poor", "speak.net.failed": "No media connection",
    "speak.net.failedHint": "Video could not reach this browser: a firewall may block UDP. Going live may fail; try another network.",
    "speak.net.rtt": "round trip {ms} ms", "speak.net.loss": "loss {pct}%",
    "speak.cd.yours": "Your talk \u201c{title}\u201d starts in {t}", "speak.cd.yoursNow": "Your talk \u201c{title}\u201d is running: {t} left",
    "speak.cd.next": "Next session \u201c{title}\u201d in {t}", "speak.cd.running": "Now: \u201c{title}\u201d, {t} left",
    "speak.cd.over": "No more sessions in this forum.",
    "backstage.title": "Backstage", "backstage.placeholder": "A message to the operators (only they and the speakers see it)",
    "ctl.kicker": "control", "ctl.liveSession": "Live session", "ctl.next": "Next", "ctl.viewers": "Watching",
    "ctl.manual": "Manual", "ctl.manualTitle": "Manual: the agenda does not put recorded videos on air by itself",
    "ctl.preview": "PREVIEW", "ctl.program": "PROGRAM", "ctl.take": "TAKE", "ctl.slate": "CUT TO SLATE",
    "ctl.takeTitle": "Put the preview on air (Enter)", "ctl.slateTitle": "Put the slate on air (S)",
    "ctl.notLive": "{name} is {state}: only a live source can go on air",
    "ctl.version": "program v", "ctl.sources": "Sources", "ctl.noSources": "No sources yet.",
    "ctl.keys": "click: preview · double-click: take · keys 1–9: preview · Enter: take · S: slate",
    "ctl.recorded": "Recorded videos", "ctl.upload": "Upload", "ctl.playing": "Playing",
    "ctl.uploading": "Uploading {pct}%", "ctl.uploaded": "Uploaded {name}: converting…",
    "ctl.venue": "Venue feed", "ctl.ingestShow": "Show ingest addresses", "ctl.ingestHide": "Hide ingest addresses",
    "ctl.state": "State:", "ctl.restreams": "Restreams", "ctl.rsName": "Name", "ctl.rsKey": "Stream key", "ctl.add": "Add",
    "ctl.recording": "Recording", "ctl.recStart": "Start recording", "ctl.recStop": "Stop recording",
    "ctl.rec.idle": "not recording", "ctl.rec.recording": "recording", "ctl.rec.finalizing": "finalizing",
    "ctl.rec.finalized": "finalized", "ctl.rec.failed": "failed",
    "ctl.rs.idle": "idle", "ctl.rs.connecting": "connecting", "ctl.rs.live": "live", "ctl.rs.retrying": "retrying",
    "ctl.rs.stopped": "stopped", "ctl.attempt": "attempt {n}",
    "ctl.onAir": "ON AIR", "ctl.state.live": "live", "ctl.state.connecting": "connecting", "ctl.state.lost": "lost",
    "ctl.state.ended": "ended", "ctl.slateName": "Slate", "ctl.connected": "Connected",
    "ctl.play": "Play", "ctl.playTake": "Play & take", "ctl.stop": "Stop", "ctl.start": "Start", "ctl.remove": "Remove",
    "ctl.programMonitor": "Program monitor", "ctl.audioTrack": "Audio track", "ctl.tile": "Tile",
    "ctl.backstage": "Backstage (speakers)", "ctl.backstagePlaceholder": "Answer the speakers",
    "qa.show": "Show", "ctl.notListening": "(not listening: ask again)",
    "status.alert.source_lost": "Source lost: {name}", "status.alert.restream_retrying": "Destination retrying: {name}",
    "status.alert.recording_failed": "Recording stopped", "status.alert.disk_low": "Disk low: the recording stops when it is full",
    "status.diskLow": "The recordings' disk is low: {gb} GB free.",
    "upload.done": "Received and ready. Thank you!", "upload.refused": "It could not be used: {why}",
    "upload.eta": ", about {s} s left", "upload.preparing": "Preparing your recording: {pct}%{eta}",
    "upload.sending": "Sending {pct}%", "upload.failed": "Sending failed: {why}", "upload.sent": "Sent.",
    "speak.cameraSwitchFailed": "That camera could not be opened ({why}).",
    "speak.micSwitchFailed": "That microphone could not be opened ({why}).",
    "status.kicker": "Status wall", "status.loss": "loss", "status.jitter": "jitter", "status.lost": "Source lost",
    "error.generic": "Something went wrong.",
    "error.token_missing": "This link has no access token. Please open the invite link you received.",
    "error.token_invalid": "This invite link is not valid. Please open the exact link you received.",
    "error.token_expired": "Your invite has expired. Please ask the organizers for a new link.",
    "error.forbidden": "Your invite does not allow this here.",
    "error.not_found": "This forum or stream does not exist.",
    "error.full": "This forum is full right now. Please try again in a few minutes.",
    "error.too_many_seats": "This invite is already watching on other devices. Close one; the page will retry.",
    "error.too_many_sources": "You already publish as many streams as allowed. Stop one first.",
    "error.unavailable": "The server is busy or restarting. The page will retry.",
    "error.timeout": "The server did not answer in time. The page will retry.",
    "error.ice_failed": "The media connection could not be set up (a firewall may block UDP).",
    "error.connection_lost": "The media connection was lost.",
    "error.rate_limited": "Slow down a little.",
    "error.too_large": "That is too long.",
  },
  zh: {
    "lang.switch": "English", "lang.switch.title": "Switch to English",
    "lobby.kicker": "线上论坛",
    "lobby.hint": "选择要观看的论坛。您的邀请链接可打开其授权的论坛。",
    "lobby.yours": "您的论坛", "lobby.others": "其他论坛（您的邀请未开放）",
    "lobby.agenda": "议程", "lobby.live": "正在直播", "lobby.next": "下一场",
    "lobby.nothing": "暂无直播", "lobby.watching": "{n} 人观看",
    "lobby.yourTime": "您的时间", "lobby.venueTime": "会场",
    "lobby.closed": "您的邀请未开放此论坛",
    "watch.connecting": "正在连接…", "watch.placeholder": "正在连接直播…",
    "watch.nowOnAir": "正在播出", "watch.watching": "在线观看", "watch.stream": "视频流",
    "watch.allForums": "全部论坛", "watch.sound": "打开声音", "watch.mute": "静音",
    "watch.session": "本场", "watch.nextUp": "下一场", "watch.speakers": "演讲嘉宾",
    "watch.notStarted": "论坛将于 {t} 后开始", "watch.break": "休息中 — 下一场：{title}，{t} 后开始",
    "watch.ended": "本论坛已结束，感谢观看。",
    "watch.reconnecting": "正在重新连接…", "watch.live": "直播中",
    "watch.fullscreen": "全屏", "watch.pip": "画中画",
    "watch.fullscreenShort": "全屏", "watch.pipShort": "画中画", "watch.volume": "音量",
    "watch.unsteady": "连接不稳定…", "watch.connectingStream": "正在连接视频流…",
    "watch.cannot": "无法继续", "watch.cannotShow": "无法显示直播。",
    "watch.serverReconnecting": "正在重新连接服务器…",
    "watch.unreachable": "无法连接服务器 — 正在重试…", "watch.retryIn": "{s} 秒后重试。",
    "watch.slate": "等待画面（暂无直播）", "watch.onAirPrefix": "正在播出：{name}",
    "chat.title": "聊天", "qa.title": "提问", "chat.send": "发送", "qa.ask": "提问",
    "chat.placeholder": "输入消息", "qa.placeholder": "向嘉宾提问",
    "demo.badge": "演示", "demo.note": "示例议程，已移到现在开始",
    "qa.sent": "您的问题已提交给主持人。", "qa.approved": "已采纳的问题",
    "qa.queue": "提问（问答队列）", "qa.approve": "采纳", "qa.dismiss": "忽略",
    "qa.answered": "已回答", "qa.empty": "暂无提问。",
    "speak.kicker": "远程嘉宾", "speak.starting": "正在启动…",
    "speak.nowOnAir": "正在播出", "speak.watching": "观看人数", "speak.connection": "连接",
    "speak.goLive": "开始直播", "speak.stop": "停止发送", "speak.devices": "您的设备",
    "speak.camera": "摄像头", "speak.mic": "麦克风", "speak.onAir": "直播中",
    "speak.preview": "您的摄像头（只有您能看到此预览）",
    "speak.waitingCamera": "正在等待摄像头和麦克风…",
    "speak.meterHint": "麦克风听到声音时，音量条会移动。",
    "speak.youAreOnAir": "您正在直播", "speak.inPreview": "预览中 — 下一个上直播",
    "speak.sending": "正在发送 — 等待上直播", "speak.connectingCamera": "正在连接您的摄像头…",
    "speak.notSending": "未发送", "speak.readyNotSending": "就绪 — 未发送", "speak.ready": "就绪 — 请按“开始直播”",
    "speak.cameraDenied": "浏览器未获准使用您的摄像头和麦克风。请在地址栏图标中允许，然后重新加载页面。",
    "speak.cameraMissing": "未找到摄像头或麦克风。请连接后重新加载页面。",
    "speak.cameraFailed": "无法打开您的摄像头或麦克风（{why}）。",
    "speak.step1": "允许浏览器使用您的摄像头和麦克风。",
    "speak.step2": "检查左侧的画面，并确认说话时麦克风音量条在移动。",
    "speak.step3": "按“开始直播”。导播切换到您时您即上直播（若本论坛自动跟随最新发言人，则立即上直播）；红色标记表示您正在直播。",
    "speak.keepOpen": "演讲时请保持此页面打开。网络中断时，页面会自动重新连接。",
    "speak.notConnected": "未连接",
    "speak.recordingHint": "可以是视频，也可以只是您的声音（会配上画面）。上传中断时，请再次选择同一文件：会从中断处继续。",
    "speak.before": "开始直播前", "speak.recording": "或发送录像", "speak.send": "发送",
    "watch.hls": "正在通过 HLS 观看", "watch.hlsStarting": "正在切换到 HLS…",
    "watch.hlsWhy": "无法建立低延迟连接（可能被防火墙阻止）：正在通过 HLS 观看，会延迟几秒。",
    "watch.hlsBlocked": "此浏览器不允许 WebRTC：正在通过 HLS 观看，会延迟几秒。",
    "watch.hlsInstead": "已改为通过 HLS 观看，会延迟几秒。",
    "error.unsupported": "此浏览器无法播放直播。",
    "speak.air.offline": "未发送 — 只有您能看到自己的画面",
    "speak.air.green-room": "候场中 — 导播能看到和听到您，观众看不到",
    "speak.air.preview": "准备 — 导播即将让您上直播",
    "speak.air.on-air": "直播中 — 观众正在看到和听到您",
    "speak.returnWaiting": "正在连接节目画面…", "speak.returnFeed": "节目画面：观众此刻看到的内容",
    "speak.returnHear": "收听（请戴耳机）", "speak.returnMute": "关闭节目声音",
    "speak.schedule": "日程", "speak.network": "网络检测", "speak.backstage": "给导播留言",
    "speak.net.checking": "检测中…", "speak.net.good": "网络良好", "speak.net.fair": "网络一般",
    "speak.net.poor": "网络较差", "speak.net.failed": "无法建立媒体连接",
    "speak.net.failedHint": "视频无法到达此浏览器：防火墙可能阻止了 UDP。开始直播可能会失败，请尝试其他网络。",
    "speak.net.rtt": "往返 {ms} 毫秒", "speak.net.loss": "丢包 {pct}%",
    "speak.cd.yours": "您的演讲“{title}”将于 {t} 后开始", "speak.cd.yoursNow": "您的演讲“{title}”进行中：剩余 {t}",
    "speak.cd.next": "下一场“{title}”将于 {t} 后开始", "speak.cd.running": "当前：“{title}”，剩余 {t}",
    "speak.cd.over": "本论坛已没有后续场次。",
    "backstage.title": "后台", "backstage.placeholder": "给导播的消息（只有导播和嘉宾能看到）",
    "ctl.kicker": "导播台", "ctl.liveSession": "当前场次", "ctl.next": "下一场", "ctl.viewers": "观看人数",
    "ctl.manual": "手动", "ctl.manualTitle": "手动：议程不会自动播出录制视频",
    "ctl.preview": "预览", "ctl.program": "节目", "ctl.take": "切换", "ctl.slate": "切到垫片",
    "ctl.takeTitle": "把预览切到直播（Enter）", "ctl.slateTitle": "切到垫片画面（S）",
    "ctl.notLive": "{name} 状态为 {state}：只有在线信号才能上直播",
    "ctl.version": "节目版本 v", "ctl.sources": "信号源", "ctl.noSources": "暂无信号源。",
    "ctl.keys": "单击：预览 · 双击：切换 · 数字键 1–9：预览 · Enter：切换 · S：垫片",
    "ctl.recorded": "录制视频", "ctl.upload": "上传", "ctl.playing": "正在播放",
    "ctl.uploading": "正在上传 {pct}%", "ctl.uploaded": "已上传 {name}：正在转换…",
    "ctl.venue": "会场信号", "ctl.ingestShow": "显示推流地址", "ctl.ingestHide": "隐藏推流地址",
    "ctl.state": "状态：", "ctl.restreams": "转推", "ctl.rsName": "名称", "ctl.rsKey": "推流密钥", "ctl.add": "添加",
    "ctl.recording": "录制", "ctl.recStart": "开始录制", "ctl.recStop": "停止录制",
    "ctl.rec.idle": "未录制", "ctl.rec.recording": "录制中", "ctl.rec.finalizing": "正在生成文件",
    "ctl.rec.finalized": "已完成", "ctl.rec.failed": "失败",
    "ctl.rs.idle": "空闲", "ctl.rs.connecting": "连接中", "ctl.rs.live": "推流中", "ctl.rs.retrying": "重试中",
    "ctl.rs.stopped": "已停止", "ctl.attempt": "第 {n} 次尝试",
    "ctl.onAir": "直播中", "ctl.state.live": "在线", "ctl.state.connecting": "连接中", "ctl.state.lost": "丢失",
    "ctl.state.ended": "已结束", "ctl.slateName": "垫片", "ctl.connected": "已连接",
    "ctl.play": "播放", "ctl.playTake": "播放并切换", "ctl.stop": "停止", "ctl.start": "开始", "ctl.remove": "删除",
    "ctl.programMonitor": "节目监看", "ctl.audioTrack": "音轨", "ctl.tile": "信号窗口",
    "ctl.backstage": "后台（嘉宾）", "ctl.backstagePlaceholder": "回复嘉宾",
    "qa.show": "恢复显示", "ctl.notListening": "（未在监听：请再次获取）",
    "status.alert.source_lost": "信号丢失：{name}", "status.alert.restream_retrying": "转推重试中：{name}",
    "status.alert.recording_failed": "录制已停止", "status.alert.disk_low": "磁盘空间不足：写满时录制会停止",
    "status.diskLow": "录制磁盘空间不足：剩余 {gb} GB。",
    "upload.done": "已收到，可以使用。谢谢！", "upload.refused": "无法使用：{why}",
    "upload.eta": "，约剩 {s} 秒", "upload.preparing": "正在处理您的录像：{pct}%{eta}",
    "upload.sending": "正在发送 {pct}%", "upload.failed": "发送失败：{why}", "upload.sent": "已发送。",
    "speak.cameraSwitchFailed": "无法打开该摄像头（{why}）。",
    "speak.micSwitchFailed": "无法打开该麦克风（{why}）。",
    "status.kicker": "状态总览", "status.loss": "丢包", "status.jitter": "抖动", "status.lost": "信号丢失",
    "error.generic": "出错了。",
    "error.token_missing": "此链接没有访问令牌。请打开您收到的邀请链接。",
    "error.token_invalid": "此邀请链接无效。请打开您收到的原始链接。",
    "error.token_expired": "您的邀请已过期。请向主办方索取新链接。",
    "error.forbidden": "您的邀请不允许此操作。",
    "error.not_found": "此论坛或视频流不存在。",
    "error.full": "此论坛当前已满，请几分钟后再试。",
    "error.too_many_seats": "此邀请已在其他设备上观看。请关闭一个，页面会自动重试。",
    "error.too_many_sources": "您发布的视频流已达上限，请先停止一个。",
    "error.unavailable": "服务器繁忙或正在重启，页面会自动重试。",
    "error.timeout": "服务器未及时响应，页面会自动重试。",
    "error.ice_failed": "无法建立媒体连接（防火墙可能阻止了 UDP）。",
    "error.connection_lost": "媒体连接已断开。",
    "error.rate_limited": "请稍慢一些。",
    "error.too_large": "内容太长。",
  },
};

function tokenLanguage() {
  const lang = tokenClaims().lang;
  return typeof lang === "string" ? lang : "";
}

function normalize(tag) {
  const lower = String(tag || "").toLowerCase();
  if (lower.startsWith("zh")) return "zh";
  if (lower.startsWith("en")) return "en";
  return "";
}

let current = null;

export function language() {
  if (current) return current;
  let stored = "";
  try { stored = window.localStorage.getItem(STORAGE_KEY) || ""; } catch (e) { /* storage blocked */ }
  current = normalize(stored) || normalize(tokenLanguage()) || normalize(navigator.language) || "en";
  return current;
}

const listeners = [];

export function onLanguageChange(fn) { listeners.push(fn); }

export function setLanguage(lang) {
  current = normalize(lang) || "en";
  try { window.localStorage.setItem(STORAGE_KEY, current); } catch (e) { /* storage blocked */ }
  applyI18n();
  for (const fn of listeners) fn(current);
}

// The phrases t() made lately, by their text: a page that shows one as its
// state (a pill, a status line) keeps its key, so a language switch says it
// again in the new language (common.js setText). Bounded: pages call t() often.
const made = new Map();

// t("lobby.watching", {n: 3}); an unknown key falls back to English, then to the key
export function t(key, vars = {}) {
  const text = (DICT[language()][key] ?? DICT.en[key] ?? key)
    .replace(/\{(\w+)\}/g, (_, name) => (name in vars ? String(vars[name]) : `{${name}}`));
  if (made.size > 1000) made.clear();
  made.set(text, [key, vars]);
  return text;
}

// [key, vars] of a text t() made, or undefined (a name, a server message, a sentence of several)
export function phraseOf(text) { return made.get(text); }

export function has(key) { return key in DICT.en; }

// A {en, zh} name from the event file in the page's language (English when no Chinese).
export function localized(name) {
  if (!name) return "";
  if (typeof name === "string") return name;
  return (language() === "zh" && name.zh) ? name.zh : (name.en || name.zh || "");
}

export function applyI18n(root = document) {
  document.documentElement.lang = language() === "zh" ? "zh-CN" : "en";
  for (const node of root.querySelectorAll("[data-i18n]")) {
    node.textContent = t(node.dataset.i18n, node.dataset.i18nVars ? JSON.parse(node.dataset.i18nVars) : {});
  }
  for (const node of root.querySelectorAll("[data-i18n-title]")) {
    node.title = t(node.dataset.i18nTitle);
    node.setAttribute("aria-label", node.title);
  }
  for (const node of root.querySelectorAll("[data-i18n-placeholder]")) node.placeholder = t(node.dataset.i18nPlaceholder);
  // names from the event file: <span data-name='{"en":..,"zh":..}'>
  for (const node of root.querySelectorAll("[data-name]")) node.textContent = localized(JSON.parse(node.dataset.name));
  // and the same name in the other language beside it, when there is one
  for (const node of root.querySelectorAll("[data-name-other]")) {
    const name = JSON.parse(node.dataset.nameOther);
    const other = language() === "zh" ? name.en : name.zh;
    node.textContent = other && other !== localized(name) ? other : "";
  }
}

// The EN/ZH button every page puts in its header (id="lang-switch").
export function mountLanguageSwitch(
  container = document.querySelector("header.top .header-side") || document.querySelector("header.top"),
) {
  if (!container || document.getElementById("lang-switch")) return;
  const button = document.createElement("button");
  button.id = "lang-switch";
  button.type = "button";
  button.className = "secondary lang-switch";
  button.dataset.i18n = "lang.switch";
  button.dataset.i18nTitle = "lang.switch.title";
  button.addEventListener("click", () => setLanguage(language() === "zh" ? "en" : "zh"));
  container.append(button);
  applyI18n();
}
