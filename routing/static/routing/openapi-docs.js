// /docs/: render the OpenAPI document with the Swagger UI served from this gateway's static files. Nothing is
// fetched from another host: the online validator Swagger UI can call is switched off.
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.schemaUrl,
    domNode: root,
    deepLinking: true,
    validatorUrl: null,
  });
});
