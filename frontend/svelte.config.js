import adapter from "@sveltejs/adapter-static";

/**
 * SvelteKit's route announcer carries a style attribute, which the service's CSP (style-src
 * without 'unsafe-inline') refuses; drop it here and hide the announcer from app.css instead.
 * @type {import("svelte/compiler").PreprocessorGroup}
 */
const announcerWithoutInlineStyle = {
  name: "announcer-without-inline-style",
  markup({ content, filename }) {
    if (!filename?.endsWith("generated/root.svelte")) return;
    return { code: content.replace(/(<div id="svelte-announcer"[^>]*?)\s+style="[^"]*"/, "$1") };
  },
};

/** @type {import("@sveltejs/kit").Config} */
const config = {
  preprocess: [announcerWithoutInlineStyle],
  kit: {
    // A single-page app: the service answers every client-side route with index.html.
    adapter: adapter({ fallback: "index.html" }),
  },
};

export default config;
