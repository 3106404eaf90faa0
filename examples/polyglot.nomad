# polyglot: Python calling JavaScript inside one Elide process (batch).
#
# Adapted from the seed's Example 4:
#   * type = "batch": the script runs once and exits; as a service (the seed left the type
#     unset, i.e. "service") Nomad would restart it forever;
#   * languages lists what the code uses (Python and JS). The seed also listed Kotlin, which
#     the script never calls;
#   * memory_limit (-> Elide's -Xmx) stays below the task's memory so the heap cap fits the
#     allocation; the script is "644" (Elide runs executable files as host programs);
#   * it prints NOMAD_ALLOC_ID and a job `env` value like the other examples.
#
#   nomad job run examples/polyglot.nomad
#   nomad alloc logs <alloc-id>     # Processed: [2, 4, 6, 8, 10]
job "polyglot-demo" {
  datacenters = ["dc1"]
  type        = "batch"

  group "app" {
    count = 1

    task "main" {
      driver = "elide"

      config {
        script = "local/main.py"

        elide_opts {
          languages    = ["python", "js"]
          memory_limit = 96
        }
      }

      env {
        GREETING = "hello from the job env block"
      }

      # Python calls JavaScript through GraalVM's polyglot API.
      template {
        destination = "local/main.py"
        perms       = "644"
        data        = <<EOF
import os

import polyglot

print("NOMAD_ALLOC_ID=" + os.environ.get("NOMAD_ALLOC_ID", "<not visible>"))
print("GREETING=" + os.environ.get("GREETING", "<not visible>"))

# Load a JavaScript helper
js_helper = polyglot.eval(language='js', string='''
  export function processData(data) {
    return data.map(x => x * 2);
  }
''')

# Use JavaScript from Python
data = [1, 2, 3, 4, 5]
result = js_helper.processData(data)
print(f"Processed: {result}")
EOF
      }

      resources {
        cpu    = 100
        memory = 128
      }
    }
  }
}
