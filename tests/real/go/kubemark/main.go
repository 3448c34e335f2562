// kubemark (hollow kubelet and hollow kube-proxy) as k8s.io/kubernetes/cmd/kubemark builds it, plus the
// --feature-gates flag the real kubelet and kube-proxy have. Upstream kubemark has no way to set a feature gate,
// and in Kubernetes binaries client-go's gates (WatchListClient) are wired to that flag, not to KUBE_FEATURE_*
// environment variables. Built inside the generated module of build.sh (it requires k8s.io/kubernetes).
package main

import (
	"os"

	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kubemark/app"
)

func main() {
	command := app.NewHollowNodeCommand()
	utilfeature.DefaultMutableFeatureGate.AddFlag(command.Flags())
	os.Exit(cli.Run(command))
}
