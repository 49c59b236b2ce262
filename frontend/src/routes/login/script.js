// Loads Google's client script (or the dev login's stand-in) once, from the URL /api/config names.

/** @param {string} src @returns {Promise<void>} */
export function loadScript(src) {
  if (window.google?.accounts?.id) return Promise.resolve();
  for (const old of document.querySelectorAll("script[data-sign-in]")) old.remove();
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = src;
    script.async = true;
    script.dataset.signIn = "";
    script.addEventListener("load", () => resolve());
    script.addEventListener("error", () =>
      reject(new Error("The sign-in script could not be loaded; try again later.")),
    );
    document.head.append(script);
  });
}
