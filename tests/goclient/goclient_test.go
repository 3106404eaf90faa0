// The nomad-driver-elide binary driven by Nomad 2.0's Go client stack: go-plugin v1.8.0 and
// grpc-go 1.83 (go.mod), stubs generated from proto/ (generate.sh), launched and reattached
// the way a Nomad 2.0 agent's plugin loader and driver manager do it.
//
//  1. the loader's fingerprint launch: handshake, PluginInfo, ConfigSchema, Kill;
//
//  2. the loader's validation launch: SetConfig without nomad_config (check only), Kill;
//
//  3. the agent (a child process: this test binary re-executed): the long-lived instance —
//     SetConfig with the NUMA Topology, Init, the Fingerprint and TaskEvents streams, a task
//     that runs and exits (start, wait, inspect, logs, destroy) and a task left running
//     (start, inspect, stats, signal, exec); it stores the ReattachConfig and the task handle
//     as the agent's state DB does, then dies by SIGKILL, as a crashed agent;
//
//  4. the restarted agent: reattaches from the ReattachConfig to the still-running plugin
//     (no SetConfig, as Nomad), Init, Fingerprint, RecoverTask from the stored handle,
//     InspectTask, ExecTaskStreaming, StopTask + WaitTask, DestroyTask, Driver.Shutdown and
//     go-plugin's Kill; the plugin must exit by itself and no shim or task process remain.
//
//     tests/goclient/generate.sh && NDE_PLUGIN=… NDE_EXECUTOR=… NDE_ELIDE=… go test -v ./...
//     (as root; `scripts/test goclient` does all of it)
package goclient

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	version "github.com/hashicorp/go-version"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	basepb "nomad-driver-elide/tests/goclient/pb/base"
	driverpb "nomad-driver-elide/tests/goclient/pb/drivers"
)

const (
	// phaseEnv makes the re-executed test binary play the agent before its crash.
	phaseEnv = "NDE_GOCLIENT_PHASE"
	// stateEnv: where that child writes what the agent's state DB would hold.
	stateEnv     = "NDE_GOCLIENT_STATE"
	workEnv      = "NDE_GOCLIENT_WORKDIR"
	rpcTimeout   = 30 * time.Second
	taskWait     = 60 * time.Second
	phaseTimeout = 5 * time.Minute
)

// The running task's app: notes what it sees in local/events, logs a line, idles.
const appRunning = `import os, signal, sys, time
def note(text):
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'events'), 'a') as f:
        f.write(text + '\n')
signal.signal(signal.SIGUSR1, lambda *_: note('usr1'))
note('started ' + os.environ.get('GREETING', '-'))
print('web is up', flush=True)
while True:
    time.sleep(1)
`

// The short task's app: one line on each stream, then exit 3.
const appExiting = `import sys
print('batch says hello', flush=True)
print('batch warns', file=sys.stderr, flush=True)
sys.exit(3)
`

// state is what the agent keeps across its crash (Nomad's client state DB: the driver
// manager's reattach config, and the handle StartTask returned — without the msgpack driver
// config, which Nomad does not persist).
type state struct {
	Reattach Reattach
	Handle   string // base64 of the protobuf TaskHandle
	AllocDir string
}

func binary(t testing.TB, env string) string {
	t.Helper()
	p := os.Getenv(env)
	if p == "" {
		t.Fatalf("%s is not set: run the harness with scripts/test goclient (it builds the "+
			"release binaries, generates the stubs and sets NDE_PLUGIN, NDE_EXECUTOR, NDE_ELIDE)", env)
	}
	abs, err := filepath.Abs(p)
	must(t, err, "%s", env)
	_, err = os.Stat(abs)
	must(t, err, "%s=%s", env, p)
	return abs
}

func must(t testing.TB, err error, format string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
}

func check(t testing.TB, ok bool, format string, args ...any) {
	t.Helper()
	if !ok {
		t.Fatalf(format, args...)
	}
}

func rpcCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), rpcTimeout)
}

func logger(name string) hclog.Logger {
	// The plugin's stderr lines are re-logged here by go-plugin, as in the agent's log.
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.Info, Output: os.Stderr})
}

// clientConfig is what Nomad's loader and driver manager hand go-plugin for a driver binary.
func clientConfig(name string) *plugin.ClientConfig {
	return &plugin.ClientConfig{
		HandshakeConfig:  Handshake,
		Plugins:          PluginSet(),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           logger(name),
	}
}

// launch starts the plugin binary as Nomad's loader does and dispenses `kind`.
func launch(t testing.TB, name, kind string) (*plugin.Client, *exec.Cmd, any) {
	t.Helper()
	cfg := clientConfig(name)
	cmd := exec.Command(binary(t, "NDE_PLUGIN"))
	cfg.Cmd = cmd
	client := plugin.NewClient(cfg)
	rpc, err := client.Client()
	must(t, err, "%s: launching the plugin (go-plugin handshake)", name)
	raw, err := rpc.Dispense(kind)
	must(t, err, "%s: dispensing %q", name, kind)
	return client, cmd, raw
}

// kill is go-plugin's Kill as Nomad calls it when it is done with an instance: the
// controller's Shutdown, then up to 2 s for the process to leave before a SIGKILL. The plugin
// must leave by itself, with status 0.
func kill(t testing.TB, name string, client *plugin.Client, cmd *exec.Cmd) {
	t.Helper()
	start := time.Now()
	client.Kill()
	took := time.Since(start)
	check(t, client.Exited(), "%s: the plugin process is still running after Kill", name)
	check(t, cmd.ProcessState != nil, "%s: no exit status", name)
	check(t, cmd.ProcessState.Success(), "%s: the plugin did not exit by itself after the "+
		"controller's Shutdown (%v, Kill took %v: go-plugin SIGKILLs after 2 s)",
		name, cmd.ProcessState, took)
	check(t, took < 2*time.Second, "%s: Kill took %v (go-plugin's graceful wait is 2 s)", name, took)
}

func pluginConfig(t testing.TB, work string) map[string]any {
	return map[string]any{
		"elide_binary":    binary(t, "NDE_ELIDE"),
		"executor_binary": binary(t, "NDE_EXECUTOR"),
		"runtime_dir":     filepath.Join(work, "run"),
	}
}

func encodePluginConfig(t testing.TB, b basepb.BasePluginClient, work string) []byte {
	t.Helper()
	ctx, cancel := rpcCtx()
	defer cancel()
	schema, err := b.ConfigSchema(ctx, &basepb.ConfigSchemaRequest{})
	must(t, err, "ConfigSchema")
	data, err := EncodeConfig(schema.GetSpec(), pluginConfig(t, work))
	must(t, err, "encoding the plugin config through its schema")
	return data
}

// topology is a 2.0 client's NUMA topology (base.proto's ClientTopology, Nomad >= 1.7).
func topology() *basepb.ClientTopology {
	cores := []*basepb.ClientTopologyCore{}
	for i := uint32(0); i < 2; i++ {
		cores = append(cores, &basepb.ClientTopologyCore{SocketId: 0, NodeId: 0, CoreId: i,
			CoreGrade: basepb.CoreGrade_Performance, BaseSpeed: 2000, MaxSpeed: 3000})
	}
	return &basepb.ClientTopology{NodeIds: []uint32{0},
		Distances: &basepb.ClientTopologySLIT{Dimension: 1, Values: []uint32{10}}, Cores: cores}
}

func alive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(fields) > 0 && fields[0] != "Z"
}

func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// processesUnder lists live processes whose command line mentions dir or the allocation
// (a shim's `--task <alloc id>/<task>/<suffix>`), or whose cwd is beneath dir.
func processesUnder(dir, allocID string) []string {
	var found []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() || !alive(pid) {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		cwd, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
		line := strings.ReplaceAll(string(cmdline), "\x00", " ")
		if strings.Contains(line, dir) || strings.HasPrefix(cwd, dir) ||
			(allocID != "" && strings.Contains(line, allocID)) {
			found = append(found, fmt.Sprintf("%d: %s (cwd %s)", pid, line, cwd))
		}
	}
	return found
}

// allocDir builds the dirs Nomad's client makes for an allocation before a task starts:
// alloc/{logs,tmp,data} and, per task, <task>/{local,secrets,tmp,private}.
func allocDir(t testing.TB, work, allocID string, tasks map[string]string) string {
	t.Helper()
	dir := filepath.Join(work, "alloc", allocID)
	for _, d := range []string{"alloc/logs", "alloc/tmp", "alloc/data"} {
		must(t, os.MkdirAll(filepath.Join(dir, d), 0o755), "alloc dir")
	}
	for name, app := range tasks {
		for _, d := range []string{"local", "tmp", "private"} {
			must(t, os.MkdirAll(filepath.Join(dir, name, d), 0o777), "task dir")
		}
		must(t, os.MkdirAll(filepath.Join(dir, name, "secrets"), 0o777), "secrets dir")
		must(t, os.WriteFile(filepath.Join(dir, name, "local", "app.py"), []byte(app), 0o644), "app")
	}
	return dir
}

var hex8 = regexp.MustCompile(`^[0-9a-f]{8}$`)

// taskConfig is the TaskConfig a Nomad 2.0 client sends for a task of an allocation.
func taskConfig(t testing.TB, d driverpb.DriverClient, alloc, allocID, name string,
	config map[string]any) *driverpb.TaskConfig {
	t.Helper()
	ctx, cancel := rpcCtx()
	defer cancel()
	schema, err := d.TaskConfigSchema(ctx, &driverpb.TaskConfigSchemaRequest{})
	must(t, err, "TaskConfigSchema")
	msgpack, err := EncodeConfig(schema.GetSpec(), config)
	must(t, err, "encoding the task config through the plugin's task schema")
	suffix := fmt.Sprintf("%08x", time.Now().UnixNano()&0xffffffff)
	check(t, hex8.MatchString(suffix), "task id suffix %q", suffix)
	logs := filepath.Join(alloc, "alloc", "logs")
	return &driverpb.TaskConfig{
		Id:                  allocID + "/" + name + "/" + suffix,
		Name:                name,
		MsgpackDriverConfig: msgpack,
		Env: map[string]string{
			"NOMAD_ALLOC_ID": allocID, "NOMAD_TASK_NAME": name,
			"NOMAD_TASK_DIR":    filepath.Join(alloc, name, "local"),
			"NOMAD_ALLOC_DIR":   filepath.Join(alloc, "alloc"),
			"NOMAD_SECRETS_DIR": filepath.Join(alloc, name, "secrets"),
			"PATH":              "/usr/local/bin:/usr/bin:/bin", "GREETING": "hi from go",
		},
		Resources: &driverpb.Resources{
			AllocatedResources: &driverpb.AllocatedTaskResources{
				Cpu:    &driverpb.AllocatedCpuResources{CpuShares: 250},
				Memory: &driverpb.AllocatedMemoryResources{MemoryMb: 256, MemoryMaxMb: 512},
			},
			LinuxResources: &driverpb.LinuxResources{CpuShares: 250, MemoryLimitBytes: 512 << 20},
		},
		AllocDir: alloc,
		// With DisableLogCollection Nomad starts no logmon but still names its FIFOs.
		StdoutPath:    filepath.Join(logs, "."+name+".stdout.fifo"),
		StderrPath:    filepath.Join(logs, "."+name+".stderr.fifo"),
		TaskGroupName: "group", JobName: "goclient", JobId: "goclient", AllocId: allocID,
		Namespace: "default", NodeName: "node", NodeId: "5b3b1bd4-3f0a-4b8e-9a1e-2d7f0c1e8a01",
	}
}

func driverState(t testing.TB, h *driverpb.TaskHandle) map[string]any {
	t.Helper()
	var s map[string]any
	must(t, json.Unmarshal(h.GetDriverState(), &s), "driver_state is not JSON")
	return s
}

func intField(t testing.TB, s map[string]any, key string) int {
	t.Helper()
	v, ok := s[key].(float64)
	check(t, ok && v > 0, "driver_state.%s: %v", key, s[key])
	return int(v)
}

func readEvents(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// logText is what the shim wrote for a task's stream (<task>.<stream>.<N>, as logmon names them).
func logText(alloc, task, stream string) string {
	files, _ := filepath.Glob(filepath.Join(alloc, "alloc", "logs", task+"."+stream+".*"))
	var out strings.Builder
	for _, f := range files {
		b, _ := os.ReadFile(f)
		out.Write(b)
	}
	return out.String()
}

func uuid4(t testing.TB) string {
	b := make([]byte, 16)
	f, err := os.Open("/dev/urandom")
	must(t, err, "urandom")
	defer f.Close()
	_, err = io.ReadFull(f, b)
	must(t, err, "urandom")
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// ---------------------------------------------------------------------------------------

func TestMain(m *testing.M) {
	if os.Getenv(phaseEnv) == "agent" {
		os.Exit(agentBeforeCrash())
	}
	os.Exit(m.Run())
}

func TestNomad2GoClient(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the harness needs root: the driver's sandbox does (run it as root, like CI)")
	}
	// When the agent child dies, its orphans (the plugin) come to us, as a crashed agent's
	// plugins go to systemd, which reaps them at once. A late reaper would leave the plugin a
	// zombie, which go-plugin's reattached client (kill(pid, 0) once a second) takes for a
	// live process: its Kill would wait out its 2 s and SIGKILL.
	must(t, unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "PR_SET_CHILD_SUBREAPER")
	work, err := os.MkdirTemp("/tmp", "ngc") // short: sockets live beneath it
	must(t, err, "work dir")
	must(t, os.Chmod(work, 0o755), "work dir")
	allocID := ""
	t.Cleanup(func() {
		if left := processesUnder(work, allocID); len(left) > 0 {
			t.Errorf("processes left behind: %v", left)
		}
		_ = os.RemoveAll(work)
	})

	t.Run("loader fingerprint launch", func(t *testing.T) { loaderFingerprint(t) })
	t.Run("loader validation launch", func(t *testing.T) { loaderValidation(t, work) })

	var st state
	var pluginPid int
	ok := t.Run("agent: long-lived instance, then crash", func(t *testing.T) {
		st = runAgentChild(t, work)
		pluginPid = st.Reattach.Pid
		allocID = filepath.Base(st.AllocDir)
	})
	if !ok {
		// Whatever the child left running: the plugin, the shims (found under work).
		if pluginPid > 0 && alive(pluginPid) {
			_ = syscall.Kill(pluginPid, syscall.SIGKILL)
		}
		killLeftovers(work, allocID)
		return
	}
	t.Run("restarted agent: reattach, recover, stop, shutdown", func(t *testing.T) {
		defer func() {
			if t.Failed() {
				if alive(pluginPid) {
					_ = syscall.Kill(pluginPid, syscall.SIGKILL)
				}
				killLeftovers(work, allocID)
			}
		}()
		afterRestart(t, work, st)
	})
}

func killLeftovers(work, allocID string) {
	for _, p := range processesUnder(work, allocID) {
		if pid, err := strconv.Atoi(strings.SplitN(p, ":", 2)[0]); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// 1. Fingerprint launch: handshake, PluginInfo, ConfigSchema, Kill.
func loaderFingerprint(t *testing.T) {
	client, cmd, raw := launch(t, "plugin_loader", PluginTypeBase)
	defer client.Kill()
	b, ok := raw.(*Base)
	check(t, ok, "dispensing base gave %T", raw)
	check(t, client.NegotiatedVersion() == 2, "negotiated protocol version %d, want 2",
		client.NegotiatedVersion())
	check(t, client.Protocol() == plugin.ProtocolGRPC, "protocol %q", client.Protocol())

	ctx, cancel := rpcCtx()
	defer cancel()
	info, err := b.Base.PluginInfo(ctx, &basepb.PluginInfoRequest{})
	must(t, err, "PluginInfo")
	check(t, info.GetType() == basepb.PluginType_DRIVER, "plugin type %v", info.GetType())
	check(t, info.GetName() == "elide", "plugin name %q", info.GetName())
	// The loader compares API versions with go-version and refuses an unparsable version.
	want := version.Must(version.NewVersion("v0.1.0"))
	found := false
	for _, v := range info.GetPluginApiVersions() {
		if pv, err := version.NewVersion(v); err == nil && pv.Equal(want) {
			found = true
		}
	}
	check(t, found, "plugin_api_versions %v lack v0.1.0", info.GetPluginApiVersions())
	_, err = version.NewVersion(info.GetPluginVersion())
	must(t, err, "plugin_version %q does not parse (fatal to a Nomad agent's start)",
		info.GetPluginVersion())

	schema, err := b.Base.ConfigSchema(ctx, &basepb.ConfigSchemaRequest{})
	must(t, err, "ConfigSchema")
	_, err = convertSpec(schema.GetSpec(), "")
	must(t, err, "the plugin config schema does not convert to hcldec")
	kill(t, "plugin_loader", client, cmd)
}

// 2. Validation launch: SetConfig without nomad_config (Nomad 2.0's check-only call), Kill.
// A config the schema refuses is an error there.
func loaderValidation(t *testing.T, work string) {
	client, cmd, raw := launch(t, "plugin_loader", PluginTypeBase)
	defer client.Kill()
	b := raw.(*Base)
	ctx, cancel := rpcCtx()
	defer cancel()
	_, err := b.Base.SetConfig(ctx, &basepb.SetConfigRequest{
		MsgpackConfig: encodePluginConfig(t, b.Base, work), PluginApiVersion: "0.1.0"})
	must(t, err, "SetConfig (validation, no nomad_config)")
	kill(t, "plugin_loader", client, cmd)

	// A value the plugin refuses (not the schema: hcldec has accepted it).
	client, _, raw = launch(t, "plugin_loader", PluginTypeBase)
	defer client.Kill()
	b = raw.(*Base)
	cfg := pluginConfig(t, work)
	cfg["runtime_dir"] = "relative/dir"
	ctx2, cancel2 := rpcCtx()
	defer cancel2()
	schema, err := b.Base.ConfigSchema(ctx2, &basepb.ConfigSchemaRequest{})
	must(t, err, "ConfigSchema")
	data, err := EncodeConfig(schema.GetSpec(), cfg)
	must(t, err, "encoding")
	_, err = b.Base.SetConfig(ctx2, &basepb.SetConfigRequest{MsgpackConfig: data,
		PluginApiVersion: "0.1.0"})
	check(t, err != nil, "SetConfig accepted runtime_dir = \"relative/dir\"")
	check(t, status.Code(err) == codes.InvalidArgument && strings.Contains(err.Error(), "runtime_dir"),
		"SetConfig's error should be InvalidArgument naming runtime_dir: %v", err)
	// Nomad 2.0.1+ kills a plugin whose SetConfig failed: it must go quietly.
	client.Kill()
	check(t, client.Exited(), "the plugin with a refused config is still running after Kill")
}

// 3. The agent, in a child process that dies by SIGKILL once the state is stored.
func runAgentChild(t *testing.T, work string) state {
	statePath := filepath.Join(work, "agent-state.json")
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.v")
	cmd.Env = append(os.Environ(), phaseEnv+"=agent", stateEnv+"="+statePath, workEnv+"="+work)
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	err := cmd.Run()
	var exit *exec.ExitError
	check(t, errors.As(err, &exit), "the agent child should have died by SIGKILL, got: %v", err)
	ws := exit.Sys().(syscall.WaitStatus)
	check(t, ws.Signaled() && ws.Signal() == syscall.SIGKILL,
		"the agent child failed before its crash: %v (see its output above)", exit)

	raw, err := os.ReadFile(statePath)
	must(t, err, "the agent child stored no state")
	var st state
	must(t, json.Unmarshal(raw, &st), "agent state")
	check(t, st.Reattach.Pid > 0 && st.Reattach.Addr != "", "reattach config %+v", st.Reattach)
	return st
}

// agentBeforeCrash is the child process's body: it returns only on failure (exit status 1).
func agentBeforeCrash() int {
	t := &childT{}
	ok := func() (ok bool) {
		defer func() {
			if r := recover(); r != nil {
				if _, failed := r.(childFailed); !failed {
					panic(r)
				}
			}
		}()
		agent(t)
		return true
	}()
	if !ok {
		// Leave nothing running: the plugin (go-plugin's Kill), and the tasks by the work dir.
		if t.onFail != nil {
			t.onFail()
		}
		killLeftovers(os.Getenv(workEnv), "")
		return 1
	}
	return 0 // not reached: agent() ends with SIGKILL
}

// childT is a minimal testing.TB for the child process (testing.T cannot be made outside
// `go test`'s runner): a failure prints and unwinds.
type childT struct {
	testing.TB
	onFail func()
}
type childFailed struct{}

func (c *childT) Helper()                   {}
func (c *childT) Logf(f string, a ...any)   { fmt.Fprintf(os.Stderr, "agent: "+f+"\n", a...) }
func (c *childT) Fatalf(f string, a ...any) { c.Logf("FAIL: "+f, a...); panic(childFailed{}) }

func agent(t *childT) {
	work := os.Getenv(workEnv)
	cfg := clientConfig("client.driver_mgr")
	cmd := exec.Command(binary(t, "NDE_PLUGIN"))
	cfg.Cmd = cmd
	client := plugin.NewClient(cfg)
	t.onFail = client.Kill
	rpc, err := client.Client()
	must(t, err, "launching the long-lived plugin")
	raw, err := rpc.Dispense(PluginTypeDriver)
	must(t, err, "dispensing driver")
	d := raw.(*Driver)
	// One context for the unary calls of the whole phase (each call is short; the phase is not).
	ctx, cancel := context.WithTimeout(context.Background(), phaseTimeout)
	defer cancel()

	// SetConfig as the driver manager sends it (ports and, since 1.7, the topology), then
	// Init (2.0.4+, right after SetConfig).
	_, err = d.Base.Base.SetConfig(ctx, &basepb.SetConfigRequest{
		MsgpackConfig:    encodePluginConfig(t, d.Base.Base, work),
		PluginApiVersion: "0.1.0",
		NomadConfig: &basepb.NomadConfig{Driver: &basepb.NomadDriverConfig{
			ClientMinPort: 14000, ClientMaxPort: 14512, Topology: topology()}},
	})
	must(t, err, "SetConfig (long-lived, with Topology)")
	_, err = d.Driver.Init(ctx, &driverpb.InitRequest{})
	must(t, err, "Init")

	fingerprint(t, d.Driver)
	events := openTaskEvents(t, d.Driver)
	defer events.cancel()

	caps, err := d.Driver.Capabilities(ctx, &driverpb.CapabilitiesRequest{})
	must(t, err, "Capabilities")
	c := caps.GetCapabilities()
	check(t, c != nil && c.GetSendSignals() && c.GetExec(), "capabilities %v", c)
	check(t, c.GetDisableLogCollection(), "DisableLogCollection is off: Nomad would start a logmon")

	allocID := uuid4(t)
	alloc := allocDir(t, work, allocID, map[string]string{"batch": appExiting, "web": appRunning})

	// A task that runs to its end: start, wait, inspect, its logs, destroy.
	batch := taskConfig(t, d.Driver, alloc, allocID, "batch", map[string]any{"script": "local/app.py"})
	started, err := d.Driver.StartTask(ctx, &driverpb.StartTaskRequest{Task: batch})
	must(t, err, "StartTask batch")
	check(t, started.GetHandle().GetConfig().GetId() == batch.Id, "the handle does not echo the task config")
	waitCtx, waitCancel := context.WithTimeout(context.Background(), taskWait)
	res, err := d.Driver.WaitTask(waitCtx, &driverpb.WaitTaskRequest{TaskId: batch.Id})
	waitCancel()
	must(t, err, "WaitTask batch")
	check(t, res.GetErr() == "" && res.GetResult() != nil, "WaitTask batch: %v", res)
	check(t, res.GetResult().GetExitCode() == 3 && res.GetResult().GetSignal() == 0,
		"batch exit %v, want 3", res.GetResult())
	insp, err := d.Driver.InspectTask(ctx, &driverpb.InspectTaskRequest{TaskId: batch.Id})
	must(t, err, "InspectTask batch")
	check(t, insp.GetTask().GetState() == driverpb.TaskState_EXITED, "batch state %v", insp.GetTask().GetState())
	check(t, insp.GetTask().GetStartedAt() != nil && insp.GetTask().GetCompletedAt() != nil &&
		insp.GetTask().GetResult().GetExitCode() == 3, "batch status %v", insp.GetTask())
	check(t, strings.Contains(logText(alloc, "batch", "stdout"), "batch says hello"),
		"batch's stdout log: %q", logText(alloc, "batch", "stdout"))
	check(t, strings.Contains(logText(alloc, "batch", "stderr"), "batch warns"),
		"batch's stderr log: %q", logText(alloc, "batch", "stderr"))
	_, err = d.Driver.DestroyTask(ctx, &driverpb.DestroyTaskRequest{TaskId: batch.Id, Force: true})
	must(t, err, "DestroyTask batch")
	bs := driverState(t, started.GetHandle())
	waitFor(t, "batch's shim to leave", 20*time.Second, func() bool { return !alive(intField(t, bs, "shim_pid")) })

	// A task left running across the crash.
	web := taskConfig(t, d.Driver, alloc, allocID, "web", map[string]any{"script": "local/app.py"})
	started, err = d.Driver.StartTask(ctx, &driverpb.StartTaskRequest{Task: web})
	must(t, err, "StartTask web")
	h := started.GetHandle()
	check(t, h.GetVersion() >= 1 && h.GetState() == driverpb.TaskState_RUNNING, "web handle %v", h)
	ws := driverState(t, h)
	eventsFile := filepath.Join(alloc, "web", "local", "events")
	waitFor(t, "web to start", taskWait, func() bool { return strings.Contains(readEvents(eventsFile), "started hi from go") })
	waitFor(t, "web's stdout log", taskWait, func() bool { return strings.Contains(logText(alloc, "web", "stdout"), "web is up") })
	insp, err = d.Driver.InspectTask(ctx, &driverpb.InspectTaskRequest{TaskId: web.Id})
	must(t, err, "InspectTask web")
	check(t, insp.GetTask().GetState() == driverpb.TaskState_RUNNING && insp.GetTask().GetStartedAt() != nil &&
		insp.GetTask().GetResult() != nil, "web status %v", insp.GetTask())

	taskStats(t, d.Driver, web.Id)

	_, err = d.Driver.SignalTask(ctx, &driverpb.SignalTaskRequest{TaskId: web.Id, Signal: "SIGUSR1"})
	must(t, err, "SignalTask web")
	waitFor(t, "web to see SIGUSR1", taskWait, func() bool { return strings.Contains(readEvents(eventsFile), "usr1") })

	execReq := &driverpb.ExecTaskRequest{TaskId: web.Id,
		Command: []string{"/bin/sh", "-c", "echo $NOMAD_TASK_NAME; echo e >&2; exit 4"},
		Timeout: durationpb.New(10 * time.Second)}
	ex, err := d.Driver.ExecTask(ctx, execReq)
	must(t, err, "ExecTask web")
	check(t, string(ex.GetStdout()) == "web\ne\n" && ex.GetResult().GetExitCode() == 4, "ExecTask: %v", ex)

	// What the agent's state DB holds: the reattach config, and the handle without its
	// msgpack driver config (not persisted by Nomad).
	rc := client.ReattachConfig()
	check(t, rc != nil && rc.Pid == cmd.Process.Pid, "ReattachConfig %+v", rc)
	stored := proto.Clone(h).(*driverpb.TaskHandle)
	stored.Config.MsgpackDriverConfig = nil
	hb, err := proto.Marshal(stored)
	must(t, err, "handle")
	st := state{Reattach: ReattachFromGoPlugin(rc), Handle: base64.StdEncoding.EncodeToString(hb), AllocDir: alloc}
	out, err := json.Marshal(st)
	must(t, err, "state")
	f, err := os.Create(os.Getenv(stateEnv))
	must(t, err, "state file")
	_, err = f.Write(out)
	must(t, err, "state file")
	must(t, f.Sync(), "state file")
	must(t, f.Close(), "state file")
	t.Logf("stored reattach config %s (shim %d, runtime %d); crashing",
		string(mustJSON(st.Reattach)), intField(t, ws, "shim_pid"), intField(t, ws, "runtime_pid"))

	// The agent crashes: no Kill, no Shutdown, the plugin keeps running.
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// fingerprint reads the stream's first message (sent at once: node registration waits for
// it) and leaves the stream open as the driver manager does, until the process ends.
func fingerprint(t testing.TB, d driverpb.DriverClient) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := d.Fingerprint(ctx, &driverpb.FingerprintRequest{})
	must(t, err, "Fingerprint")
	first := make(chan *driverpb.FingerprintResponse, 1)
	errs := make(chan error, 1)
	go func() {
		fp, err := stream.Recv()
		if err != nil {
			errs <- err
			return
		}
		first <- fp
		for {
			if _, err := stream.Recv(); err != nil {
				return
			}
		}
	}()
	select {
	case fp := <-first:
		check(t, fp.GetHealth() == driverpb.FingerprintResponse_HEALTHY,
			"fingerprint health %v: %q", fp.GetHealth(), fp.GetHealthDescription())
		check(t, fp.GetHealthDescription() == "Healthy", "health description %q", fp.GetHealthDescription())
		check(t, fp.GetErr() == "", "fingerprint err %q (2.0: \"failed to fingerprint driver\")", fp.GetErr())
		check(t, fp.GetAttributes()["driver.elide.version"].GetStringVal() != "",
			"no driver.elide.version attribute: %v", fp.GetAttributes())
	case err := <-errs:
		cancel()
		t.Fatalf("Fingerprint stream: %v", err)
	case <-time.After(rpcTimeout):
		cancel()
		t.Fatalf("no first fingerprint within %v", rpcTimeout)
	}
	_ = cancel // the stream lives as long as the connection, as in the agent
}

type taskEvents struct {
	cancel context.CancelFunc
	mu     sync.Mutex
	got    []*driverpb.DriverTaskEvent
}

func openTaskEvents(t testing.TB, d driverpb.DriverClient) *taskEvents {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := d.TaskEvents(ctx, &driverpb.TaskEventsRequest{})
	must(t, err, "TaskEvents")
	ev := &taskEvents{cancel: cancel}
	go func() {
		for {
			e, err := stream.Recv()
			if err != nil {
				return
			}
			ev.mu.Lock()
			ev.got = append(ev.got, e)
			ev.mu.Unlock()
		}
	}()
	return ev
}

func taskStats(t testing.TB, d driverpb.DriverClient, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	stream, err := d.TaskStats(ctx, &driverpb.TaskStatsRequest{TaskId: id,
		CollectionInterval: durationpb.New(time.Second)})
	must(t, err, "TaskStats")
	for i := 0; i < 2; i++ {
		s, err := stream.Recv()
		must(t, err, "TaskStats sample %d", i)
		st := s.GetStats()
		check(t, st.GetTimestamp() != nil, "a stats sample without timestamp is dropped by Nomad")
		check(t, st.GetAggResourceUsage() != nil, "a nil agg_resource_usage panics a Nomad agent")
		check(t, st.GetAggResourceUsage().GetMemory() != nil && st.GetAggResourceUsage().GetCpu() != nil,
			"stats sample %v", st)
	}
}

// 4. The restarted agent.
func afterRestart(t *testing.T, work string, st state) {
	hb, err := base64.StdEncoding.DecodeString(st.Handle)
	must(t, err, "handle")
	h := &driverpb.TaskHandle{}
	must(t, proto.Unmarshal(hb, h), "handle")
	ds := driverState(t, h)
	shimPid, runtimePid := intField(t, ds, "shim_pid"), intField(t, ds, "runtime_pid")
	check(t, alive(st.Reattach.Pid), "the plugin (pid %d) did not survive the agent's crash", st.Reattach.Pid)
	check(t, alive(shimPid) && alive(runtimePid), "the task did not survive the agent's crash")
	// The orphaned plugin is ours to reap (PR_SET_CHILD_SUBREAPER): its exit status tells
	// whether it left by itself or was SIGKILLed.
	exited := make(chan syscall.WaitStatus, 1)
	go func() {
		var ws syscall.WaitStatus
		for {
			_, err := syscall.Wait4(st.Reattach.Pid, &ws, 0, nil)
			if err != syscall.EINTR {
				break
			}
		}
		exited <- ws
	}()

	rc, err := st.Reattach.ToGoPlugin()
	must(t, err, "reattach config")
	cfg := clientConfig("client.driver_mgr")
	cfg.Reattach = rc
	client := plugin.NewClient(cfg)
	defer client.Kill()
	rpc, err := client.Client()
	must(t, err, "reattaching to pid %d at %s", st.Reattach.Pid, st.Reattach.Addr)
	raw, err := rpc.Dispense(PluginTypeDriver)
	must(t, err, "dispensing driver after reattach")
	d := raw.(*Driver)
	ctx, cancel := context.WithTimeout(context.Background(), phaseTimeout)
	defer cancel()

	// No SetConfig after a reattach (the instance keeps its config); 2.0 sends Init on every
	// dispense, and reopens the streams.
	_, err = d.Driver.Init(ctx, &driverpb.InitRequest{})
	must(t, err, "Init after reattach")
	fingerprint(t, d.Driver)
	events := openTaskEvents(t, d.Driver)
	defer events.cancel()

	// The task runner's restore: RecoverTask with the stored handle (the id in
	// handle.config.id: Nomad never fills task_id).
	_, err = d.Driver.RecoverTask(ctx, &driverpb.RecoverTaskRequest{Handle: h})
	must(t, err, "RecoverTask")
	id := h.GetConfig().GetId()
	insp, err := d.Driver.InspectTask(ctx, &driverpb.InspectTaskRequest{TaskId: id})
	must(t, err, "InspectTask after reattach")
	check(t, insp.GetTask().GetState() == driverpb.TaskState_RUNNING, "web state %v", insp.GetTask().GetState())
	check(t, insp.GetDriver().GetAttributes()["runtime_pid"] == strconv.Itoa(runtimePid),
		"runtime_pid %q, want %d", insp.GetDriver().GetAttributes()["runtime_pid"], runtimePid)

	// `nomad alloc exec` over grpc-go's bidi stream: setup, stdin, its close, the result.
	execStreaming(t, d.Driver, id)

	// Stop while a WaitTask is pending, as the task runner's kill path does.
	waited := make(chan *driverpb.WaitTaskResponse, 1)
	waitErr := make(chan error, 1)
	go func() {
		wctx, wcancel := context.WithTimeout(context.Background(), taskWait)
		defer wcancel()
		r, err := d.Driver.WaitTask(wctx, &driverpb.WaitTaskRequest{TaskId: id})
		if err != nil {
			waitErr <- err
			return
		}
		waited <- r
	}()
	_, err = d.Driver.StopTask(ctx, &driverpb.StopTaskRequest{TaskId: id, Signal: "SIGTERM",
		Timeout: durationpb.New(5 * time.Second)})
	must(t, err, "StopTask")
	select {
	case r := <-waited:
		check(t, r.GetErr() == "" && r.GetResult() != nil, "WaitTask: %v", r)
		// The stand-in, like Elide, exits 143 on SIGTERM.
		check(t, r.GetResult().GetExitCode() == 143 && r.GetResult().GetSignal() == 0,
			"web exit %v, want 143", r.GetResult())
	case err := <-waitErr:
		t.Fatalf("WaitTask: %v", err)
	case <-time.After(taskWait):
		t.Fatalf("WaitTask did not return within %v of StopTask", taskWait)
	}
	_, err = d.Driver.DestroyTask(ctx, &driverpb.DestroyTaskRequest{TaskId: id, Force: true})
	must(t, err, "DestroyTask")
	waitFor(t, "the shim to leave", 20*time.Second, func() bool { return !alive(shimPid) })
	check(t, !alive(runtimePid), "the task's runtime (pid %d) outlived DestroyTask", runtimePid)
	if sock, ok := ds["socket_path"].(string); ok {
		_, err := os.Stat(sock)
		check(t, os.IsNotExist(err), "the shim's socket %s remains", sock)
	}

	// A 2.0.4+ agent stopping: Driver.Shutdown, then go-plugin's Kill (the controller's
	// Shutdown). The reattached plugin is not our child: it must leave by itself, well within
	// go-plugin's 2 s grace.
	_, err = d.Driver.Shutdown(ctx, &driverpb.ShutdownRequest{})
	must(t, err, "Driver.Shutdown")
	check(t, alive(st.Reattach.Pid), "Driver.Shutdown must not end the plugin by itself")
	start := time.Now()
	client.Kill()
	took := time.Since(start)
	check(t, client.Exited(), "the plugin is still running after Kill")
	check(t, took < 2*time.Second, "Kill took %v: the plugin did not exit after the controller's "+
		"Shutdown and go-plugin SIGKILLed it", took)
	select {
	case ws := <-exited:
		check(t, ws.Exited() && ws.ExitStatus() == 0, "the plugin ended with %v, want exit status 0 "+
			"(it leaves by itself after the controller's Shutdown)", ws)
	case <-time.After(10 * time.Second):
		t.Fatalf("the plugin (pid %d) is still there 10 s after Kill", st.Reattach.Pid)
	}
	_, err = os.Stat(st.Reattach.Addr)
	check(t, os.IsNotExist(err), "the plugin's socket %s remains", st.Reattach.Addr)
	if left := processesUnder(work, filepath.Base(st.AllocDir)); len(left) > 0 {
		t.Fatalf("processes left behind: %v", left)
	}
}

func execStreaming(t testing.TB, d driverpb.DriverClient, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	stream, err := d.ExecTaskStreaming(ctx)
	must(t, err, "ExecTaskStreaming")
	send := func(r *driverpb.ExecTaskStreamingRequest) {
		must(t, stream.Send(r), "ExecTaskStreaming send")
	}
	send(&driverpb.ExecTaskStreamingRequest{Setup: &driverpb.ExecTaskStreamingRequest_Setup{
		TaskId: id, Command: []string{"cat"}, Tty: false}})
	send(&driverpb.ExecTaskStreamingRequest{}) // a heartbeat, as the client sends them
	send(&driverpb.ExecTaskStreamingRequest{Stdin: &driverpb.ExecTaskStreamingIOOperation{Data: []byte("in\n")}})
	send(&driverpb.ExecTaskStreamingRequest{Stdin: &driverpb.ExecTaskStreamingIOOperation{Close: true}})
	must(t, stream.CloseSend(), "CloseSend")
	var stdout bytes.Buffer
	var last *driverpb.ExecTaskStreamingResponse
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		must(t, err, "ExecTaskStreaming recv")
		stdout.Write(m.GetStdout().GetData())
		last = m
	}
	check(t, stdout.String() == "in\n", "exec stdout %q", stdout.String())
	check(t, last != nil && last.GetExited() && last.GetResult() != nil && last.GetResult().GetExitCode() == 0,
		"exec's last message %v", last)
}
