import { sveltekit } from "@sveltejs/kit/vite";
import { defineConfig } from "vite";

// `npm run dev` proxies the API to the service of `make run`.
const service = "http://127.0.0.1:8080";

export default defineConfig({
  plugins: [sveltekit()],
  server: {
    proxy: {
      "/api": { target: service, changeOrigin: true },
      "/docs": { target: service, changeOrigin: true },
    },
  },
});
