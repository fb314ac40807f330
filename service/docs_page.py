"""The API page featserve serves at ``/``: Swagger UI from the service's own files, nothing else.

BentoML's page loads Google Tag Manager, so every visitor's browser called a
third party, and its Swagger UI keeps the default online validator, whose
badge is an image from validator.swagger.io with the page's spec URL in it.
This page loads only BentoML's bundled Swagger UI files (``/static_content/``)
and ``/docs.json``, turns the validator off, and is answered with a
``Content-Security-Policy`` that lets the browser load nothing from any
other origin, whatever a future script asks for.
"""

from __future__ import annotations

__all__ = ["CONTENT_SECURITY_POLICY", "DOCS_PAGE_HTML"]

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'"
)
"""Same origin only: Swagger UI's scripts, styles, images and its fetch of ``/docs.json``.
(Swagger UI sets inline styles, and the page starts it with one inline script.)"""

DOCS_PAGE_HTML = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>featserve API</title>
    <link rel="stylesheet" type="text/css" href="./static_content/swagger-ui.css">
    <link rel="stylesheet" type="text/css" href="./static_content/index.css">
    <link rel="icon" type="image/png" href="./static_content/favicon-light-32x32.png">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="./static_content/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
    <script>
      window.onload = function () {
        window.ui = SwaggerUIBundle({
          url: "./docs.json",
          dom_id: "#swagger-ui",
          deepLinking: true,
          validatorUrl: null,
          presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
          layout: "StandaloneLayout",
        });
      };
    </script>
  </body>
</html>
"""
"""The page: BentoML's bundled Swagger UI, started on ``./docs.json`` with no validator."""
