// YurtHub, the peer the benchmarks compare edgeproxy with: OpenYurt's yurthub command, started as its own main does.
package main

import (
	"flag"

	"k8s.io/apiserver/pkg/server"

	"github.com/openyurtio/openyurt/cmd/yurthub/app"
)

func main() {
	cmd := app.NewCmdStartYurtHub(server.SetupSignalContext())
	cmd.Flags().AddGoFlagSet(flag.CommandLine)
	if err := cmd.Execute(); err != nil {
		panic(err)
	}
}
