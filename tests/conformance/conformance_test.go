// Nomad's driver conformance suite for exec (plugins/drivers/testutils of Nomad v1.6.1)
// against the nomad-driver-elide binary.
//
// The plugin is launched the way Nomad's plugin loader launches it (go-plugin, base.Handshake,
// gRPC, the driver plugin map) and configured through its own config schema (HCL values →
// cty → msgpack, as the loader does); the suite's DriverHarness serves it in process. Tasks
// get Nomad's alloc dir layout and logmon FIFOs from the harness (MkAllocDir) and run the
// Elide stand-in with a small Python app.
//
//	NDE_PLUGIN=target/release/nomad-driver-elide NDE_EXECUTOR=target/release/elide-executor \
//	NDE_ELIDE=tests/elide-standin/elide go test -v -count=1 ./...     (as root; scripts/test does it)
package conformance

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"github.com/hashicorp/nomad/client/lib/cgutil"
	"github.com/hashicorp/nomad/helper/pluginutils/hclspecutils"
	"github.com/hashicorp/nomad/helper/pluginutils/hclutils"
	"github.com/hashicorp/nomad/helper/uuid"
	"github.com/hashicorp/nomad/nomad/structs"
	"github.com/hashicorp/nomad/plugins/base"
	"github.com/hashicorp/nomad/plugins/drivers"
	"github.com/hashicorp/nomad/plugins/drivers/testutils"
	"github.com/hashicorp/nomad/plugins/shared/hclspec"
	"github.com/stretchr/testify/require"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/msgpack"
)

// The task's app: idles until stopped.
const app = "import time\nwhile True:\n    time.sleep(1)\n"

func binary(t testing.TB, env string) string {
	p := os.Getenv(env)
	if p == "" {
		t.Fatalf("%s is not set: run the suite with scripts/test conformance (it builds the "+
			"release binaries and sets NDE_PLUGIN, NDE_EXECUTOR and NDE_ELIDE)", env)
	}
	abs, err := filepath.Abs(p)
	require.NoError(t, err)
	_, err = os.Stat(abs)
	require.NoError(t, err, "%s=%s", env, p)
	return abs
}

// encode turns HCL-like values into the msgpack Nomad sends for a schema (what its plugin
// loader does with a plugin block, and its client with a task's config).
func encode(t testing.TB, schema *hclspec.Spec, values map[string]interface{}) cty.Value {
	spec, diag := hclspecutils.Convert(schema)
	require.False(t, diag.HasErrors(), "%v", diag)
	val, diag, errs := hclutils.ParseHclInterface(values, spec, nil)
	require.False(t, diag.HasErrors(), "%v %v", diag, errs)
	return val
}

// launch starts the plugin binary as Nomad's loader does and configures it.
func launch(t testing.TB, config map[string]interface{}) drivers.DriverPlugin {
	_, d := launchClient(t, config)
	return d
}

// launchClient is launch, also returning go-plugin's client (the plugin's socket is in its
// ReattachConfig).
func launchClient(t testing.TB, config map[string]interface{}) (*plugin.Client, drivers.DriverPlugin) {
	level := hclog.Info
	if _, bench := t.(*testing.B); bench {
		level = hclog.Warn // the benchmarks' figures alone on stdout
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "nomad-driver-elide", Level: level})
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig: base.Handshake,
		Plugins: map[string]plugin.Plugin{
			base.PluginTypeBase:   &base.PluginBase{},
			base.PluginTypeDriver: drivers.NewDriverPlugin(nil, logger),
		},
		Cmd:              exec.Command(binary(t, "NDE_PLUGIN")),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           logger,
	})
	t.Cleanup(client.Kill)
	rpc, err := client.Client()
	require.NoError(t, err, "launching the plugin")
	raw, err := rpc.Dispense(base.PluginTypeDriver)
	require.NoError(t, err, "dispensing the driver")
	d := raw.(drivers.DriverPlugin)

	runtimeDir, err := os.MkdirTemp("/tmp", "ndec-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(runtimeDir) })
	values := map[string]interface{}{
		"elide_binary":    binary(t, "NDE_ELIDE"),
		"executor_binary": binary(t, "NDE_EXECUTOR"),
		"runtime_dir":     runtimeDir,
	}
	for k, v := range config {
		values[k] = v
	}
	schema, err := d.ConfigSchema()
	require.NoError(t, err)
	val := encode(t, schema, values)
	data, err := msgpack.Marshal(val, val.Type())
	require.NoError(t, err)
	require.NoError(t, d.SetConfig(&base.Config{
		PluginConfig: data,
		ApiVersion:   drivers.ApiVersion010,
		AgentConfig: &base.AgentConfig{Driver: &base.ClientDriverConfig{
			ClientMinPort: 14000, ClientMaxPort: 14512,
		}},
	}))
	return client, d
}

// resources as Nomad's client hands them over (on cgroup v2 with the task's scope, which the
// harness creates under testing.slice, as Nomad 1.6's cpuset manager would).
func resources(allocID, task string) *drivers.Resources {
	r := &drivers.Resources{
		NomadResources: &structs.AllocatedTaskResources{
			Memory: structs.AllocatedMemoryResources{MemoryMB: 128},
			Cpu:    structs.AllocatedCpuResources{CpuShares: 100},
		},
		LinuxResources: &drivers.LinuxResources{MemoryLimitBytes: 128 << 20, CPUShares: 100},
	}
	if cgutil.UseV2 {
		r.LinuxResources.CpusetCgroupPath = filepath.Join(cgutil.CgroupRoot, "testing.slice",
			cgutil.CgroupScope(allocID, task))
	}
	return r
}

// startTask runs the app in a harness-built alloc dir and waits until it runs.
func startTask(t *testing.T, h *testutils.DriverHarness, d drivers.DriverPlugin) *drivers.TaskConfig {
	allocID := uuid.Generate()
	task := &drivers.TaskConfig{
		ID:        uuid.Generate(),
		AllocID:   allocID,
		Name:      "conformance",
		Resources: resources(allocID, "conformance"),
	}
	cleanup := h.MkAllocDir(task, true)
	// The harness removes the alloc dir, not the temp dir it made for it.
	base := filepath.Dir(task.AllocDir)
	t.Cleanup(func() { _ = os.Remove(base) })
	t.Cleanup(cleanup)
	local := filepath.Join(task.AllocDir, task.Name, "local")
	require.NoError(t, os.WriteFile(filepath.Join(local, "app.py"), []byte(app), 0o644))
	schema, err := d.TaskConfigSchema()
	require.NoError(t, err)
	require.NoError(t, task.EncodeDriverConfig(encode(t, schema,
		map[string]interface{}{"script": "local/app.py"})))
	_, _, err = h.StartTask(task)
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = h.StopTask(task.ID, 5*time.Second, "SIGTERM")
		_ = h.DestroyTask(task.ID, true)
	})
	require.NoError(t, h.WaitUntilStarted(task.ID, 60*time.Second))
	return task
}

func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the conformance suite needs root: the driver's sandbox does (run it as root, like CI)")
	}
}

func TestExecConformance(t *testing.T) {
	requireRoot(t)

	// The plugin's defaults: FSIsolation NONE with the sandbox's read-only host view.
	t.Run("readonly", func(t *testing.T) {
		d := launch(t, nil)
		h := testutils.NewDriverHarness(t, d)
		task := startTask(t, h, d)
		testutils.ExecTaskStreamingConformanceTests(t, h, task.ID)
		testExecFSIsolationNoneReadOnly(t, h, task)
		testExecTask(t, h, task)
	})

	// fs_isolation = "none": the host's file system as raw_exec's tasks see it.
	t.Run("fs_isolation_none", func(t *testing.T) {
		d := launch(t, map[string]interface{}{"fs_isolation": "none"})
		h := testutils.NewDriverHarness(t, d)
		task := startTask(t, h, d)
		testutils.ExecTaskStreamingConformanceTests(t, h, task.ID)
		testExecTask(t, h, task)
	})
}

// testExecFSIsolationNoneReadOnly: what the plugin's default sandbox adds to Nomad's promise
// for FSIsolation NONE. Nomad documents NONE as "the task's dirs are host paths"
// (NOMAD_TASK_DIR, NOMAD_ALLOC_DIR, NOMAD_SECRETS_DIR, and TMPDIR = the task's tmp/, are the
// host's; no chroot); upstream's TestExecFSIsolation checks it with a file made by mktemp,
// which lands in TMPDIR, and passes as it is. The sandbox keeps that promise for every dir
// Nomad names, while /tmp itself is private to the task and the rest of the host is
// read-only: a command that writes to /tmp directly, or outside the task's dirs, does not
// reach the host. raw_exec-like behaviour is the operator's fs_isolation = "none".
func testExecFSIsolationNoneReadOnly(t *testing.T, h *testutils.DriverHarness, task *drivers.TaskConfig) {
	t.Run("isolation: NONE with a read-only host view", func(t *testing.T) {
		caps, err := h.Capabilities()
		require.NoError(t, err)
		require.Equal(t, drivers.FSIsolationNone, caps.FSIsolation)
		require.True(t, caps.Exec)

		text := "hello from the other side"
		for _, dir := range []string{"$NOMAD_TASK_DIR", "$NOMAD_ALLOC_DIR", "$NOMAD_SECRETS_DIR"} {
			code, stdout, stderr := testutils.ExecTask(t, h, task.ID,
				`FILE=$(mktemp -p "`+dir+`"); echo "$FILE"; echo "`+text+`" >> "$FILE"`, false, "")
			require.Zero(t, code, "%s: %s", dir, stderr)
			file := strings.TrimSpace(stdout)
			// The task's path is the host's path.
			b, err := os.ReadFile(file)
			require.NoError(t, err, "%s: the task wrote %s", dir, file)
			require.Equal(t, text, strings.TrimSpace(string(b)))
			code, stdout, _ = testutils.ExecTask(t, h, task.ID, "cat "+file, false, "")
			require.Zero(t, code)
			require.Equal(t, text, strings.TrimSpace(stdout))
		}

		// The task's /tmp is its own.
		code, stdout, _ := testutils.ExecTask(t, h, task.ID,
			`FILE=$(mktemp -p /tmp); echo "$FILE"; echo "`+text+`" >> "$FILE"`, false, "")
		require.Zero(t, code)
		tmp := strings.TrimSpace(stdout)
		_, err = os.ReadFile(tmp)
		require.True(t, os.IsNotExist(err), "%s leaked to the host: %v", tmp, err)
		code, stdout, _ = testutils.ExecTask(t, h, task.ID, "cat "+tmp, false, "")
		require.Zero(t, code)
		require.Equal(t, text, strings.TrimSpace(stdout))

		// The rest of the host is read-only.
		probe := "/etc/nomad-driver-elide-conformance-" + task.AllocID
		code, _, stderr := testutils.ExecTask(t, h, task.ID, "touch "+probe, false, "")
		require.NotZero(t, code)
		require.Contains(t, stderr, "Read-only file system")
		_, err = os.Stat(probe)
		require.True(t, os.IsNotExist(err))

		// Upstream's cgroup check, unchanged.
		code, stdout, _ = testutils.ExecTask(t, h, task.ID, "cat /proc/self/cgroup", false, "")
		require.Zero(t, code)
		if !cgutil.UseV2 {
			require.Contains(t, stdout, ":freezer:/nomad", "not in a freezer cgroup: %s", stdout)
		} else {
			require.True(t, strings.HasSuffix(strings.TrimSpace(stdout), ".scope"), "%q", stdout)
		}
	})
}

// testExecTask: the non-streaming ExecTask (template change scripts, script checks): the
// combined output, the exit code, and the timeout.
func testExecTask(t *testing.T, h *testutils.DriverHarness, task *drivers.TaskConfig) {
	t.Run("ExecTask", func(t *testing.T) {
		r, err := h.ExecTask(task.ID, []string{"/bin/sh", "-c", "echo out; echo err >&2; exit 2"},
			10*time.Second)
		require.NoError(t, err)
		require.Equal(t, "out\nerr\n", string(r.Stdout))
		require.Equal(t, 2, r.ExitResult.ExitCode)

		start := time.Now()
		_, err = h.ExecTask(task.ID, []string{"sleep", "60"}, time.Second)
		require.Error(t, err)
		require.Contains(t, err.Error(), "did not finish within 1s")
		require.Less(t, time.Since(start), 30*time.Second)

		_, err = h.ExecTask(task.ID, []string{"no-such-command"}, 10*time.Second)
		require.Error(t, err)
		require.Contains(t, err.Error(), "was not found inside the task")
	})
}
