// The lobby: carry the visitor's invite token (if the lobby URL has one) to the watch links.
const token = new URLSearchParams(window.location.search).get("token");
if (token) {
  for (const link of document.querySelectorAll("a.watch-link")) {
    const url = new URL(link.href);
    url.searchParams.set("token", token);
    link.href = url.toString();
  }
}
