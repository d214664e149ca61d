// Chat and Q&A lists, shared by the watch page and the control page's Q&A
// panel. Names and texts are the guests' own words: they go in with
// textContent, never innerHTML.

// One <li> for a <message> (docs/protocol.md); `actions` are extra nodes (buttons).
export function messageItem(message, actions = []) {
  const li = document.createElement("li");
  li.dataset.message = message.id;
  li.dataset.kind = message.kind;
  li.className = [message.answered ? "answered" : "", message.hidden ? "hidden-message" : "",
    message.approved ? "approved" : ""].filter(Boolean).join(" ");
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = message.name;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = message.text;
  li.append(who, text, ...actions);
  return li;
}

// A list kept in order of posting, updated in place by message id.
export class MessageList {
  constructor(element, { filter = () => true, actions = () => [] } = {}) {
    this.element = element;
    this.filter = filter;
    this.actions = actions;
    this.messages = new Map();
  }

  put(message) {
    if (!this.filter(message)) return this.remove(message.id);
    this.messages.set(message.id, message);
    const item = messageItem(message, this.actions(message));
    const old = this.element.querySelector(`li[data-message="${CSS.escape(message.id)}"]`);
    if (old) old.replaceWith(item);
    else {
      const follow = this.element.scrollTop + this.element.clientHeight >= this.element.scrollHeight - 8;
      this.element.append(item);
      if (follow) this.element.scrollTop = this.element.scrollHeight; // stay at the newest unless reading back
    }
  }

  remove(id) {
    this.messages.delete(id);
    const old = this.element.querySelector(`li[data-message="${CSS.escape(id)}"]`);
    if (old) old.remove();
  }

  replace(messages) {
    this.messages.clear();
    this.element.replaceChildren();
    for (const message of messages) this.put(message);
  }
}
