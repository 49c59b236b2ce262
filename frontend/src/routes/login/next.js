// Where to go after signing in: the ?next= path when it stays on this site, else the customers.
const HOME = "/customer";

/** @param {string | null} next @param {string} origin this page's origin */
export function safeNext(next, origin) {
  // "//host" and "/\host" are other sites to a browser; control characters get stripped into them.
  if (!next || !next.startsWith("/") || /^\/[/\\]|[\\\u0000-\u001f\u007f]/.test(next)) return HOME;
  const url = new URL(next, origin);
  if (url.origin !== origin || url.pathname === "/login") return HOME;
  return url.pathname + url.search + url.hash;
}
