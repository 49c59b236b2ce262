// An unknown path is an ordinary 404 page, not an error worth a console entry.
/** @type {import("@sveltejs/kit").HandleClientError} */
export function handleError({ error, status, message }) {
  if (status !== 404) console.error(error);
  return { message };
}
