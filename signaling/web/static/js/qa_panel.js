// The control page's Q&A panel: the operators' queue of questions (approve:
// shown to every guest; dismiss: hidden; mark answered) and the latest chat
// messages with a hide button (a hidden one stays, struck through, with Show). Fed by chat_history at join and the
// "moderation" pushes (operators only). Texts go in as textContent.
import { describe, onLanguageChange, request, t } from "./common.js";
import { MessageList } from "./chat.js";

function button(text, onClick) {
  const node = document.createElement("button");
  node.type = "button";
  node.className = "secondary small";
  node.textContent = text;
  node.addEventListener("click", onClick);
  return node;
}

export function mountQaPanel(socket, forumId, root, flash) {
  const moderate = async (message, action) => {
    try {
      await request(socket, "moderate", { forum_id: forumId, message_id: message.id, action });
    } catch (error) {
      flash("bad", `${t("qa.queue")}: ${describe(error)}`);
    }
  };
  const queue = new MessageList(root.querySelector(".qa-queue"), {
    filter: (m) => m.kind === "question" && !m.hidden,
    actions: (m) => [
      m.approved ? null : button(t("qa.approve"), () => moderate(m, "approve")),
      button(t("qa.dismiss"), () => moderate(m, "hide")),
      m.answered ? null : button(t("qa.answered"), () => moderate(m, "answer")),
    ].filter(Boolean),
  });
  // hidden chat messages stay listed (struck through) so a hide can be undone
  const chat = new MessageList(root.querySelector(".qa-chat"), {
    filter: (m) => m.kind === "chat",
    actions: (m) => [m.hidden ? button(t("qa.show"), () => moderate(m, "show"))
      : button(t("qa.dismiss"), () => moderate(m, "hide"))],
  });
  const empty = root.querySelector(".qa-empty");
  const update = () => { empty.hidden = queue.messages.size > 0; };
  // the buttons are drawn in the language of the moment: draw them again on a switch
  onLanguageChange(() => {
    queue.replace([...queue.messages.values()]);
    chat.replace([...chat.messages.values()]);
  });
  socket.on("moderation", (message) => {
    if (message.forum_id !== forumId) return;
    queue.put(message);
    chat.put(message);
    update();
  });
  const panel = {
    queue,
    chat,
    async load() { // at every (re)join: the pushes missed meanwhile are in the history
      try {
        const ack = await request(socket, "chat_history", { forum_id: forumId });
        queue.replace(ack.messages);
        chat.replace(ack.messages);
        update();
      } catch (error) {
        flash("warn", `${t("qa.queue")}: ${describe(error)}`);
      }
    },
  };
  return panel;
}
