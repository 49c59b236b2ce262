// Copies Swagger UI (from the swagger-ui-dist package) and our init script into build/docs,
// which the service serves at /docs for its API docs page.
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const target = join(root, "build", "docs");
const swagger = join(root, "node_modules", "swagger-ui-dist");
mkdirSync(target, { recursive: true });
for (const file of ["swagger-ui.css", "swagger-ui-bundle.js"]) {
  copyFileSync(join(swagger, file), join(target, file));
}
copyFileSync(join(root, "docs", "swagger-init.js"), join(target, "swagger-init.js"));
