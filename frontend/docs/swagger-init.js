// Swagger UI for the service's own OpenAPI document. "Try it out" runs same-origin, so the
// browser sends the session cookie and an Origin header, as the API requires.
window.ui = SwaggerUIBundle({
  url: "/api/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
});
