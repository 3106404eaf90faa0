# hello-javascript: the JavaScript twin of hello-python -- a script run once (batch).
#
# As in hello-python: the script is not executable (perms = "644"; Elide runs +x files as
# host programs), and it prints NOMAD_ALLOC_ID and a job `env` value, which guest code sees
# because the driver exposes the task environment to it. In Elide, process.env is
# read-only: read it, never write to it.
#
#   nomad job run examples/hello-javascript.nomad
#   nomad alloc logs <alloc-id>
job "hello-javascript" {
  datacenters = ["dc1"]
  type        = "batch"

  group "javascript" {
    count = 1

    task "hello" {
      driver = "elide"

      config {
        script = "local/hello.js"

        elide_opts {
          languages = ["js"]
        }
      }

      env {
        GREETING = "hello from the job env block"
      }

      template {
        destination = "local/hello.js"
        perms       = "644"
        data        = <<EOF
console.log("Hello from Elide on Nomad!");
console.log("This is a polyglot runtime (JavaScript)");
console.log("NOMAD_ALLOC_ID=" + (process.env.NOMAD_ALLOC_ID || "<not visible>"));
console.log("GREETING=" + (process.env.GREETING || "<not visible>"));
EOF
      }

      resources {
        cpu    = 100
        memory = 128
      }
    }
  }
}
