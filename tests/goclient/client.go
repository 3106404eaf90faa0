// Package goclient is a Nomad 2.0-style Go client for the nomad-driver-elide binary: go-plugin
// v1.8.0 and grpc-go 1.83 (the versions Nomad 2.0.5 links), with gRPC stubs generated from
// this repository's proto/ (generate.sh). Test code only: see goclient_test.go and README.md.
package goclient

import (
	"context"
	"fmt"
	"net"

	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	basepb "nomad-driver-elide/tests/goclient/pb/base"
	driverpb "nomad-driver-elide/tests/goclient/pb/drivers"
)

// Handshake is Nomad's (plugins/base.Handshake): protocol version 2 and its magic cookie.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  2,
	MagicCookieKey:   "NOMAD_PLUGIN_MAGIC_COOKIE",
	MagicCookieValue: "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255",
}

// The names Nomad dispenses plugins by (base.PluginTypeBase, base.PluginTypeDriver).
const (
	PluginTypeBase   = "base"
	PluginTypeDriver = "driver"
)

// Base is what dispensing "base" returns: the BasePlugin service.
type Base struct {
	Base basepb.BasePluginClient
	// Done is cancelled when go-plugin sees the plugin process exit.
	Done context.Context
}

// Driver is what dispensing "driver" returns: Nomad's driver plugin client embeds the base
// client, so both services are reachable from it.
type Driver struct {
	Base
	Driver driverpb.DriverClient
}

// basePlugin and driverPlugin are the client halves of Nomad's plugin.GRPCPlugin
// implementations (plugins/base.PluginBase, plugins/drivers.PluginDriver): Nomad only ever
// uses them as clients; no server half is needed here.
type basePlugin struct{ plugin.NetRPCUnsupportedPlugin }

func (basePlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error {
	return fmt.Errorf("the harness is a client only")
}

func (basePlugin) GRPCClient(ctx context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return &Base{Base: basepb.NewBasePluginClient(c), Done: ctx}, nil
}

type driverPlugin struct{ plugin.NetRPCUnsupportedPlugin }

func (driverPlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error {
	return fmt.Errorf("the harness is a client only")
}

func (driverPlugin) GRPCClient(ctx context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return &Driver{Base: Base{Base: basepb.NewBasePluginClient(c), Done: ctx},
		Driver: driverpb.NewDriverClient(c)}, nil
}

// PluginSet is the plugin map Nomad's loader and driver manager give go-plugin.
func PluginSet() map[string]plugin.Plugin {
	return map[string]plugin.Plugin{
		PluginTypeBase:   basePlugin{},
		PluginTypeDriver: driverPlugin{},
	}
}

// Reattach is the plugin's reattach config as Nomad stores it in its client state DB
// (helper/pluginutils.ReattachConfig: go-plugin's net.Addr flattened to strings, so that it
// survives a JSON round trip).
type Reattach struct {
	Protocol string
	Network  string
	Addr     string
	Pid      int
}

// ReattachFromGoPlugin flattens go-plugin's ReattachConfig.
func ReattachFromGoPlugin(c *plugin.ReattachConfig) Reattach {
	return Reattach{Protocol: string(c.Protocol), Network: c.Addr.Network(),
		Addr: c.Addr.String(), Pid: c.Pid}
}

// ToGoPlugin rebuilds go-plugin's ReattachConfig (Nomad: ReattachConfigToGoPlugin).
func (r Reattach) ToGoPlugin() (*plugin.ReattachConfig, error) {
	var addr net.Addr
	switch r.Network {
	case "unix", "unixgram", "unixpacket":
		a, err := net.ResolveUnixAddr(r.Network, r.Addr)
		if err != nil {
			return nil, err
		}
		addr = a
	case "tcp", "tcp4", "tcp6":
		a, err := net.ResolveTCPAddr(r.Network, r.Addr)
		if err != nil {
			return nil, err
		}
		addr = a
	default:
		return nil, fmt.Errorf("unknown network %q in the reattach config", r.Network)
	}
	return &plugin.ReattachConfig{Protocol: plugin.Protocol(r.Protocol), Addr: addr, Pid: r.Pid}, nil
}
