// Who is signed in, shared by every page: `user` once known (null when signed out), and
// `reason`, the message the login page shows about why it was sent there.
/** @typedef {{id: number, email: string, username: string, name: string, picture: string, admin: boolean}} User */

export const auth = $state({
  /** @type {User | null} */
  user: null,
  reason: "",
});
