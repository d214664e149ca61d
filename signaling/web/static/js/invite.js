// The invite token in the page's address and what it claims. The claims are
// read for display only (which forums to list first, which language); the
// server verifies the token on every request.

export function readToken() {
  const token = new URLSearchParams(window.location.search).get("token");
  return token && token.trim() ? token.trim() : null;
}

// {role, forums: [...] | "*", name, lang?} or {} for no or an unreadable token
export function tokenClaims(token = readToken()) {
  if (!token) return {};
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(Array.from(atob(part + "===".slice((part.length + 3) % 4)),
      (c) => `%${c.charCodeAt(0).toString(16).padStart(2, "0")}`).join(""));
    const claims = JSON.parse(json);
    return claims && typeof claims === "object" ? claims : {};
  } catch (e) {
    return {};
  }
}

// Whether the token opens a forum (null: no token, e.g. a public event).
export function opensForum(claims, forumId) {
  if (!claims.forums) return null;
  return claims.forums === "*" || (Array.isArray(claims.forums) && claims.forums.includes(forumId));
}
