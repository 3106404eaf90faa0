# http-server: a long-running Python web service on Elide, registered in Nomad's own
# service catalog with an HTTP health check.
#
# Adapted from the seed's Example 2 where Elide's real contract requires it:
#   * the app binds 0.0.0.0 explicitly: Elide's servers bind localhost by default, which
#     Nomad's health check (and everyone else) could not reach;
#   * the port comes from Nomad (NOMAD_PORT_http, also passed as --port). Elide has no
#     --port flag for script servers and reads no PORT variable;
#   * it serves its own /health route: Elide has no built-in health endpoint for apps;
#   * host networking with a dynamic port (no bridge, no `to = 8080` mapping);
#   * kill_signal = "SIGUSR2": Elide turns SIGTERM/SIGINT/SIGHUP into an immediate exit
#     (128+signal) without giving guest code a hook, so a graceful drain needs another
#     signal. The app handles SIGUSR2 by finishing in-flight requests and exiting 0.
#     (That the Python guest can install a SIGUSR2 handler is what the driver's Elide
#     stand-in provides; on a real Elide build verify that GraalPy delivers it -- if not, the
#     task is killed after kill_timeout, as with SIGTERM.)
#   * `nomad alloc signal -s SIGUSR1 <alloc>` makes it log "received SIGUSR1";
#   * count = 1, small resources, the script inlined with perms "644" instead of an
#     artifact download (Elide runs executable files as host programs).
#
#   nomad job run examples/http-server.nomad
#   nomad service info elide-web
#   nomad alloc signal -s SIGUSR1 <alloc-id>
#   nomad job stop elide-web          # -> "shutting down gracefully", exit 0
job "elide-web" {
  datacenters = ["dc1"]
  type        = "service"

  group "web" {
    count = 1

    network {
      port "http" {}
    }

    task "server" {
      driver = "elide"

      kill_signal  = "SIGUSR2"
      kill_timeout = "10s"

      config {
        script = "local/server.py"
        args   = ["--port", "${NOMAD_PORT_http}"]

        env = {
          "LOG_LEVEL" = "info"
        }

        elide_opts {
          languages    = ["python"]
          memory_limit = 96
        }
      }

      env {
        GREETING = "hello from the job env block"
      }

      service {
        provider = "nomad"
        name     = "elide-web"
        port     = "http"

        check {
          type     = "http"
          path     = "/health"
          interval = "5s"
          timeout  = "2s"
        }
      }

      template {
        destination = "local/server.py"
        perms       = "644"
        data        = <<EOF
import argparse
import os
import queue
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser(description="tiny HTTP service for Nomad + Elide")
parser.add_argument("--port", type=int, default=int(os.environ.get("NOMAD_PORT_http", "8080")))
parser.add_argument("--host", default="0.0.0.0")  # Elide binds localhost unless told otherwise
opts = parser.parse_args()

ALLOC = os.environ.get("NOMAD_ALLOC_ID", "<not visible>")
LOG_LEVEL = os.environ.get("LOG_LEVEL", "info")


def log(message):
    print(message, flush=True)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body = b"ok\n"
        elif self.path == "/":
            body = ("hello from Elide on Nomad, alloc " + ALLOC + "\n").encode()
        else:
            self.send_error(404, "not found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        log("request: " + self.address_string() + " " + (fmt % args))


server = ThreadingHTTPServer((opts.host, opts.port), Handler)
server.daemon_threads = False  # server_close() waits for in-flight requests
signals = queue.SimpleQueue()


def on_signal(signum, frame):
    # Only queue it (SimpleQueue.put is safe in a handler). A handler that printed could
    # interrupt a print() -- its own, when a second signal comes -- and fail with
    # "reentrant call inside BufferedWriter".
    signals.put(signum)


def control():
    while True:
        signum = signals.get()
        log("received " + signal.Signals(signum).name)
        if signum == signal.SIGUSR2:
            log("shutting down gracefully")
            server.shutdown()  # serve_forever returns: no new connections
            return


signal.signal(signal.SIGUSR1, on_signal)
signal.signal(signal.SIGUSR2, on_signal)
threading.Thread(target=control, name="control", daemon=True).start()
log("NOMAD_ALLOC_ID=" + ALLOC)
log("GREETING=" + os.environ.get("GREETING", "<not visible>"))
log("LOG_LEVEL=" + LOG_LEVEL)
log("listening on http://" + opts.host + ":" + str(opts.port))

# The main thread serves: Python runs signal handlers only on it, and serve_forever wakes at
# least every poll interval (0.5 s) even when another thread took the signal.
server.serve_forever()
server.server_close()  # let in-flight requests finish
log("bye")
sys.exit(0)
EOF
      }

      resources {
        cpu    = 100
        memory = 128
      }
    }
  }
}
