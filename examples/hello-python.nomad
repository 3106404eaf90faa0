# hello-python: the smallest Elide job -- a Python script run once (batch).
#
# Adapted from the seed's Example 1 only where Elide's real CLI contract requires it:
#   * the script is written with perms = "644": Elide runs an *executable* file as a host
#     program instead of interpreting it, so a +x script (the seed's "755") would bypass Elide;
#   * it also prints NOMAD_ALLOC_ID and a value from the job's `env` block, which Elide only
#     shows to guest code because the driver exposes the task environment to the guest
#     (Elide hides the host environment from guests by default).
#
#   nomad job run examples/hello-python.nomad
#   nomad alloc logs <alloc-id>
job "hello-python" {
  datacenters = ["dc1"]
  type        = "batch"

  group "python" {
    count = 1

    task "hello" {
      driver = "elide"

      config {
        # Relative to the task directory; Elide picks the language from the extension.
        script = "local/hello.py"

        elide_opts {
          languages = ["python"]
        }
      }

      env {
        GREETING = "hello from the job env block"
      }

      # The script is inlined (no artifact download needed).
      template {
        destination = "local/hello.py"
        perms       = "644"
        data        = <<EOF
import os

print("Hello from Elide on Nomad!")
print("This is a polyglot runtime")
print("NOMAD_ALLOC_ID=" + os.environ.get("NOMAD_ALLOC_ID", "<not visible>"))
print("GREETING=" + os.environ.get("GREETING", "<not visible>"))
EOF
      }

      resources {
        cpu    = 100
        memory = 128
      }
    }
  }
}
