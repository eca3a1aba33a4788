// Starts Swagger UI on this API's OpenAPI document; a file of its own, as the CSP allows no inline script.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  validatorUrl: null,  // the default asks a public validator for a badge
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
