# ai-inference: local LLM inference with Elide's built-in `elide:llm` module (llama.cpp),
# called from Python through the polyglot API.
#
# THIS JOB CANNOT RUN ON THE BUILD MACHINES: it downloads a model (~670 MB) from Hugging
# Face, and they have no internet access; the driver's Elide stand-in has no `elide:llm`
# either. It is shipped as an example and checked with `nomad job validate` only.
#
# Adapted from the seed's Example 3 where Elide's real contract requires it:
#   * type = "batch", count = 1: the script infers once and exits (as a 2-instance service
#     Nomad would restart it forever);
#   * `elide:llm` exports named functions (params, huggingface, infer, inferSync), as in
#     Elide's own examples, instead of a default export;
#   * every params field is set: when JS passes a params object, omitted booleans and
#     numbers decode to false/0 -- e.g. allowDownload would become false;
#   * the model cache lives under $HOME, which the driver points at a writable directory.
#     Elide's loader prints the Hugging Face repo, name and token (if any) to stderr, so do
#     not put a token in this job; it would land in `nomad alloc logs`;
#   * the script is "644" (Elide runs executable files as host programs) and prints
#     NOMAD_ALLOC_ID and a job `env` value like the other examples.
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
          enable_ai    = true
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

# Load Elide's AI module via JavaScript
helper = polyglot.eval(language='js', string='''
  import { params, huggingface, inferSync } from "elide:llm";
  export function infer(prompt) {
    const model = huggingface({
      repo: "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
      name: "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf",
    });
    const p = params({
      verbose: false,
      allowDownload: true,
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
result = helper.infer(prompt)
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
