// A single-page app: no server-side rendering; the service serves index.html for every page.
export const ssr = false;
