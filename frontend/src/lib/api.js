// The service's API: one private `send()` and a one-line verb per endpoint.
//
// A 401, or a 403 `user_disabled`, sends the browser to /login?next=<this page> with the server's
// message as the reason; any other failure is thrown as an ApiError carrying the API's message
// (a 403 `admin_only` included, which pages show in place as "not allowed").
import { goto } from "$app/navigation";
import { auth } from "$lib/auth.svelte.js";

export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {string} code
   * @param {string} message
   */
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }

  /** Refused for lack of rights: pages say "not allowed" and show no data. */
  get forbidden() {
    return this.status === 403;
  }
}

/**
 * @param {string} method
 * @param {string} path
 * @param {unknown} [body]
 * @param {{ redirect?: boolean }} [options] redirect: false keeps a 401 or 403 an ApiError
 * @returns {Promise<any>}
 */
async function send(method, path, body, { redirect = true } = {}) {
  /** @type {Record<string, string>} */
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      credentials: "same-origin",
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "network", "The service cannot be reached; check your connection.");
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (response.ok) return data;
  const code = data?.error ?? `http_${response.status}`;
  const message = data?.message ?? `The request failed (${response.status}).`;
  if (redirect && (response.status === 401 || code === "user_disabled")) {
    auth.user = null;
    auth.reason = message;
    const here = location.pathname + location.search;
    if (location.pathname !== "/login") {
      await goto(`/login?next=${encodeURIComponent(here)}`, { replaceState: true });
    }
  }
  throw new ApiError(response.status, code, message);
}

/** @param {Record<string, string | number | null | undefined>} params */
function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// Signing in and out
export const config = () => send("GET", "/api/config", undefined, { redirect: false });
export const loginNonce = () => send("POST", "/api/login/nonce", undefined, { redirect: false });
/** @param {{credential: string, select_by?: string}} response Google's CredentialResponse */
export const login = (response) => send("POST", "/api/login", response, { redirect: false });
export const logout = () => send("POST", "/api/logout", undefined, { redirect: false });

// The signed-in user
export const user = () => send("GET", "/api/user");
/** The signed-in user, or null: never redirects (for public pages). */
export const currentUser = () =>
  send("GET", "/api/user", undefined, { redirect: false }).catch((error) =>
    error instanceof ApiError && (error.status === 401 || error.status === 403)
      ? null
      : Promise.reject(error),
  );

// Customers
/** @param {number} offset @param {number} limit */
export const customers = (offset, limit) => send("GET", `/api/customer${query({ offset, limit })}`);
/** @param {{name: string, email: string}} customer */
export const addCustomer = (customer) => send("POST", "/api/customer", customer);
/** @param {number} id */
export const deleteCustomer = (id) => send("DELETE", `/api/customer/${id}`);

// Your own sessions
export const sessions = () => send("GET", "/api/sessions");
/** @param {string} id */
export const revokeSession = (id) => send("DELETE", `/api/sessions/${encodeURIComponent(id)}`);
export const revokeOtherSessions = () => send("POST", "/api/sessions/revoke-others");

// Administration
export const adminStatus = () => send("GET", "/api/admin/status");
/** @param {{query?: string, offset?: number, limit?: number}} params */
export const adminUsers = (params) => send("GET", `/api/admin/users${query(params)}`);
/** @param {{email: string, name?: string, admin?: boolean}} user */
export const addUser = (user) => send("POST", "/api/admin/users", user);
/** @param {number} id @param {{disabled?: boolean, admin?: boolean}} change */
export const changeUser = (id, change) => send("PATCH", `/api/admin/users/${id}`, change);
/** @param {number} id */
export const deleteUser = (id) => send("DELETE", `/api/admin/users/${id}`);
/** @param {number} id */
export const revokeUserSessions = (id) => send("POST", `/api/admin/users/${id}/revoke-sessions`);
/** @param {{user_id?: string | number, offset?: number, limit?: number}} params */
export const adminSessions = (params) => send("GET", `/api/admin/sessions${query(params)}`);
/** @param {string} id */
export const adminRevokeSession = (id) =>
  send("DELETE", `/api/admin/sessions/${encodeURIComponent(id)}`);
/**
 * @param {{user_id?: string | number, user_email?: string, kind?: string, before?: number | null, limit?: number}} params
 */
export const audit = (params) => send("GET", `/api/admin/audit${query(params)}`);
export const auditKinds = () => send("GET", "/api/admin/audit/kinds");
