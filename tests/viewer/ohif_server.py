"""Serves the prebuilt OHIF viewer with one DICOMweb data source proxied to Orthanc (same origin).

The proxy forwards the Host header unchanged, so Orthanc writes bulk-data URIs for this
origin (otherwise the browser blocks them as cross-origin).
"""

from __future__ import annotations

import http.client
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

APP_CONFIG = """window.config = {
  routerBasename: '/',
  extensions: [], modes: [], showStudyList: true, showWarningMessageForCrossOrigin: false,
  defaultDataSourceName: 'dicomweb',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'dicomweb',
    configuration: {
      friendlyName: 'Orthanc', name: 'orthanc',
      wadoUriRoot: '/wado', qidoRoot: '/dicom-web', wadoRoot: '/dicom-web',
      qidoSupportsIncludeField: false, supportsReject: false,
      imageRendering: 'wadors', thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true, supportsFuzzyMatching: false, supportsWildcard: true,
      // PDFs come as bulk data (Orthanc's DICOMweb has no PDF /rendered)
      staticWado: false, singlepart: 'bulkdata,video',
      bulkDataURI: { enabled: true, relativeResolution: 'studies' },
    },
  }],
};
"""


def make_server(dist: Path, orthanc_http_port: int, port: int = 0) -> ThreadingHTTPServer:
    """Start the server in a thread; ``server.requests`` records (path, status) of proxied calls."""
    proxied: list[tuple[str, int]] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(dist), **kwargs)

        def log_message(self, *args):  # quiet
            pass

        def _proxy(self) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", orthanc_http_port, timeout=60)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "accept-encoding")}
            conn.request(self.command, self.path, body=body, headers=headers)
            rsp = conn.getresponse()
            data = rsp.read()
            proxied.append((self.path, rsp.status))
            self.send_response(rsp.status)
            for k, v in rsp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            conn.close()

        def do_GET(self) -> None:  # noqa: N802
            if self.path.startswith(("/dicom-web", "/wado")):
                return self._proxy()
            if self.path.split("?")[0] == "/app-config.js":
                data = APP_CONFIG.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/javascript")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            target = dist / self.path.split("?")[0].lstrip("/")
            if not target.is_file():
                self.path = "/index.html"  # single-page app routes
            return super().do_GET()

        do_POST = _proxy

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.requests = proxied  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
