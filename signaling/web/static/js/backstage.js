// The backstage channel between a forum's speakers and its operators
// (socket.io `chat` kind "backstage", pushed as "backstage" to both; never
// to guests). Shared by the speak page and the control page. Names and
// texts go in with textContent (chat.js), never innerHTML.
import { describe, request, t } from "./common.js";
import { MessageList } from "./chat.js";

// root holds ul.backstage-list, form.backstage-form (input + button) and .backstage-status
const FRESH_MS = 10000; // a new message from the other side marks the panel this long

export function mountBackstage(socket, forumId, root, { canSend = () => true, onMessage = () => {} } = {}) {
  let freshTimer = null;
  const markFresh = () => {
    root.classList.add("backstage-fresh");
    clearTimeout(freshTimer);
    freshTimer = setTimeout(() => root.classList.remove("backstage-fresh"), FRESH_MS);
  };
  const sent = new Set(); // texts this page is sending: their push is not news
  const list = new MessageList(root.querySelector(".backstage-list"), {
    filter: (m) => m.kind === "backstage" && !m.hidden,
  });
  const form = root.querySelector(".backstage-form");
  const input = form.querySelector("input");
  const status = root.querySelector(".backstage-status");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || !canSend()) return;
    status.textContent = "";
    sent.add(text);
    try {
      const ack = await request(socket, "chat", { forum_id: forumId, text, kind: "backstage" });
      input.value = "";
      list.put(ack.message);
    } catch (error) {
      status.textContent = describe(error); // too long, too many a minute: with the reason
    } finally {
      sent.delete(text);
    }
  });
  socket.on("backstage", (message) => {
    if (message.forum_id !== forumId) return;
    const fresh = !list.messages.has(message.id);
    list.put(message);
    if (fresh && !message.hidden && !sent.has(message.text)) {
      markFresh();
      onMessage(message);
    }
  });
  return {
    list,
    async load() { // at every (re)join: what was missed meanwhile is in the history
      try {
        const ack = await request(socket, "chat_history", { forum_id: forumId });
        list.replace(ack.messages);
      } catch (error) {
        status.textContent = `${t("backstage.title")}: ${describe(error)}`;
      }
    },
  };
}
