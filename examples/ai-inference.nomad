# ai-inference: local LLM inference with Elide's built-in `elide:llm` module (llama.cpp),
# called from Python through the polyglot API.
#
# THIS JOB CANNOT RUN ON THE BUILD MACHINES: the plugin downloads a model (~670 MB) from
# Hugging Face, and they have no internet access; the driver's Elide stand-in has no
# `elide:llm` either. It is shipped as an example and checked with `nomad job validate` only.
#
# The model comes from the node's model cache (docs/driver.md, "Models"): the plugin
# downloads it once per node, checks its sha256, and binds it read-only into every task at
# local/models/tinyllama.gguf ($ELIDE_MODELS_DIR), so ten of these tasks share one download,
# one file on disk and one copy in memory. Give the digest Hugging Face lists for the file
# (its "SHA256" on the file page; or `sha256sum` of a copy you trust):
#
#   nomad job run -var tinyllama_sha256=<64 hex digits> ai-inference.nomad
#
# Without it the task fails at start with "config.elide_opts.model[0].sha256: is required".
#
# Adapted from the seed's Example 3 where Elide's real contract requires it:
#   * type = "batch", count = 1: the script infers once and exits (as a 2-instance service
#     Nomad would restart it forever);
#   * `elide:llm` exports named functions (params, huggingface, infer, inferSync), as in
#     Elide's own examples, instead of a default export;
#   * every params field is set: when JS passes a params object, omitted booleans and
#     numbers decode to false/0 -- e.g. allowDownload would become false;
#   * the model is loaded with `localModel("file://" + path)`: Elide turns the string into a
#     path with Paths.get(URI.create(...)), so it must be a file:// URI (docs/elide.md §5);
#     with a local model Elide downloads nothing (allowDownload = false) and never prints a
#     Hugging Face token;
#   * the script is "644" (Elide runs executable files as host programs) and prints
#     NOMAD_ALLOC_ID and a job `env` value like the other examples.
variable "tinyllama_sha256" {
  type        = string
  default     = ""
  description = "sha256 of tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf (Hugging Face lists it)"
}

job "ai-worker" {
  datacenters = ["dc1"]
  type        = "batch"

  group "inference" {
    count = 1

    task "ai" {
      driver = "elide"

      config {
        script = "local/inference.py"

        elide_opts {
          languages    = ["python", "js"]
          memory_limit = 1536

          # Fetched once per node into the plugin's model cache, verified, bound read-only.
          model {
            repo   = "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF"
            file   = "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"
            sha256 = var.tinyllama_sha256
            name   = "tinyllama.gguf"
          }
        }
      }

      env {
        PROMPT = "What is Elide?"
      }

      template {
        destination = "local/inference.py"
        perms       = "644"
        data        = <<EOF
# AI inference script using Elide's local AI
import os

import polyglot

print("NOMAD_ALLOC_ID=" + os.environ.get("NOMAD_ALLOC_ID", "<not visible>"))
prompt = os.environ.get("PROMPT", "What is Elide?")
print("PROMPT=" + prompt)
# The plugin's read-only copy of the model (ELIDE_MODELS_DIR = <task dir>/local/models).
model_path = os.path.join(os.environ.get("ELIDE_MODELS_DIR", "local/models"), "tinyllama.gguf")

# Load Elide's AI module via JavaScript
helper = polyglot.eval(language='js', string='''
  import { params, localModel, inferSync } from "elide:llm";
  export function infer(modelPath, prompt) {
    const model = localModel("file://" + modelPath);
    const p = params({
      verbose: false,
      allowDownload: false,
      disableGpu: true,
      gpuLayers: 0,
      contextSize: 2048,
      threadCount: 2,
      threadBatchCount: 2,
    });
    return inferSync(p, model, prompt);
  }
''')

# Use it
result = helper.infer(model_path, prompt)
print(result)
EOF
      }

      # A 1.1B-parameter Q4 model needs roughly 1-2 GB: this job does not fit a tiny dev agent.
      resources {
        cpu    = 1000
        memory = 2048
      }
    }
  }
}
