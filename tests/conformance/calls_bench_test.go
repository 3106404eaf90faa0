package conformance

// What a Nomad agent's restore costs per task in calls to the plugin, against the floor of
// any external plugin (issue #21: "agent kill -9 -> all 1,000 running again").
//
// Nomad 1.6's client restores allocations one after another (client.restoreState), and for
// each task it makes three blocking calls to the driver before the next: TaskConfigSchema
// (then hclspecutils.Convert of the answer) and Capabilities (TaskRunner.initDriver), and
// RecoverTask (TaskRunner.Restore). So a restart of N tasks waits N times for those round
// trips over the plugin's Unix socket. BenchmarkRestoreCalls times them as Nomad's own client
// code makes them; BenchmarkRoundTrip sets the same gRPC call (grpc.health.v1 Check) to the
// plugin against a Go gRPC server in another process, which is what any Go driver plugin
// (podman, a third party's) answers with:
//
//	NDE_PLUGIN=… NDE_EXECUTOR=… NDE_ELIDE=… go test -run '^$' -bench . -benchtime 2000x
//
// tests/bench/plugin_calls.sh builds what it needs and prints the ratio.

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/hashicorp/nomad/helper/pluginutils/hclspecutils"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	hpb "google.golang.org/grpc/health/grpc_health_v1"
)

// goServerEnv makes the test binary a plain Go gRPC server (health service) on that socket:
// the baseline, in its own process as a plugin is.
const goServerEnv = "NDE_BENCH_GO_GRPC_SERVER"

func TestMain(m *testing.M) {
	if sock := os.Getenv(goServerEnv); sock != "" {
		l, err := net.Listen("unix", sock)
		if err != nil {
			os.Exit(2)
		}
		s := grpc.NewServer()
		hpb.RegisterHealthServer(s, health.NewServer())
		os.Stdout.WriteString("listening\n") // the parent waits for this line
		_ = s.Serve(l)
		return
	}
	os.Exit(m.Run())
}

func BenchmarkRestoreCalls(b *testing.B) {
	_, d := launchClient(b, nil)
	b.Run("TaskConfigSchema+Convert+Capabilities", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			schema, err := d.TaskConfigSchema()
			require.NoError(b, err)
			_, diag := hclspecutils.Convert(schema)
			require.False(b, diag.HasErrors(), "%v", diag)
			_, err = d.Capabilities()
			require.NoError(b, err)
		}
	})
}

// BenchmarkSchemaConvert: Nomad's hclspecutils.Convert of the plugin's task config schema
// alone (once per task in a restore). It grows with the attributes (each type expression is
// parsed): docs/performance.md compares it with the exec driver's.
func BenchmarkSchemaConvert(b *testing.B) {
	_, d := launchClient(b, nil)
	schema, err := d.TaskConfigSchema()
	require.NoError(b, err)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_, diag := hclspecutils.Convert(schema)
		require.False(b, diag.HasErrors(), "%v", diag)
	}
}

func healthRoundTrips(b *testing.B, socket string) {
	conn, err := grpc.Dial("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(b, err)
	defer conn.Close()
	c := hpb.NewHealthClient(conn)
	// The plugin serves "plugin" (go-plugin's health check); the Go server "" (overall).
	_, err = c.Check(context.Background(), &hpb.HealthCheckRequest{Service: "plugin"})
	service := "plugin"
	if err != nil {
		service = ""
	}
	for i := 0; i < 50; i++ { // connection set up, windows grown
		_, err = c.Check(context.Background(), &hpb.HealthCheckRequest{Service: service})
		require.NoError(b, err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_, err = c.Check(context.Background(), &hpb.HealthCheckRequest{Service: service})
		require.NoError(b, err)
	}
}

func BenchmarkRoundTrip(b *testing.B) {
	b.Run("plugin", func(b *testing.B) {
		client, _ := launchClient(b, nil)
		healthRoundTrips(b, client.ReattachConfig().Addr.String())
	})
	b.Run("go-server-other-process", func(b *testing.B) {
		socket := filepath.Join(b.TempDir(), "go.sock")
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), goServerEnv+"="+socket)
		out, err := cmd.StdoutPipe()
		require.NoError(b, err)
		require.NoError(b, cmd.Start())
		b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		line, err := bufio.NewReader(out).ReadString('\n')
		require.NoError(b, err, "the Go server did not start")
		require.Equal(b, "listening\n", line)
		healthRoundTrips(b, socket)
	})
}
