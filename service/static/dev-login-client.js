// Dev login: a stand-in for Google's client library (https://accounts.google.com/gsi/client),
// served only when DEV_LOGIN=1. It keeps the same interface, so the page's real sign-in code
// runs; instead of a Google account it asks for an email address and gets a token signed by
// the service's own dev key.
(() => {
  let settings = null;

  async function signIn(email) {
    const response = await fetch("/api/dev-login/token", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ email, nonce: settings.nonce ?? null }),
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.message || "dev login failed");
    settings.callback({ credential: body.credential, select_by: "btn", clientId: settings.client_id });
  }

  function renderButton(parent) {
    const form = document.createElement("form");
    form.className = "dev-login";
    form.innerHTML =
      '<label>Email (dev login) <input name="email" type="email" required autocomplete="email"></label>' +
      ' <button type="submit">Sign in (dev login)</button>';
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      signIn(form.elements.email.value.trim()).catch((error) => {
        form.dataset.error = error.message;
      });
    });
    parent.replaceChildren(form);
  }

  window.google = {
    accounts: {
      id: {
        initialize(options) { settings = options; },
        renderButton,
        prompt() {},
        cancel() {},
        disableAutoSelect() {},
      },
    },
  };
})();
