package xla

import (
	"fmt"
	"strings"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/backends/simplego"
)

// Backend names accepted by Options.Backend.
const (
	BackendAuto     = "auto"     // XLA when a PJRT plugin is installed (and built with -tags xla), else simplego
	BackendSimpleGo = "simplego" // GoMLX's pure-Go backend; "simplego:<config>" passes a simplego config string
	BackendXLACPU   = "xla:cpu"  // XLA through the PJRT CPU plugin (needs -tags xla)
	BackendXLACUDA  = "xla:cuda" // XLA through the PJRT CUDA plugin (needs -tags xla)
)

// defaultSimpleGoConfig is the simplego configuration used when none is given:
// simplego's parallel op scheduler has been seen to deadlock inside gradient
// graphs, so ops run one at a time (DotGeneral still parallelises internally).
const defaultSimpleGoConfig = "ops_sequential"

// openBackend resolves an Options.Backend string to a GoMLX backend and the
// name Executor.Backend reports.
func openBackend(spec string) (backends.Backend, string, error) {
	switch {
	case spec == "" || spec == BackendAuto:
		if plugin, ok := xlaPluginAvailable(); ok {
			b, err := newXLABackend(plugin)
			if err == nil {
				return b, "xla:" + plugin, nil
			}
			// Fall through to simplego: a broken plugin must not stop the server.
		}
		return openSimpleGo("")
	case spec == BackendSimpleGo || strings.HasPrefix(spec, BackendSimpleGo+":"):
		return openSimpleGo(strings.TrimPrefix(strings.TrimPrefix(spec, BackendSimpleGo), ":"))
	case strings.HasPrefix(spec, "xla:") || spec == "xla":
		plugin := strings.TrimPrefix(strings.TrimPrefix(spec, "xla"), ":")
		if plugin == "" {
			plugin = "cpu"
		}
		b, err := newXLABackend(plugin)
		if err != nil {
			return nil, "", fmt.Errorf("xla: backend %q: %w", spec, err)
		}
		return b, "xla:" + plugin, nil
	}
	return nil, "", fmt.Errorf("xla: unknown backend %q (want auto, simplego[:config], xla:cpu or xla:cuda)", spec)
}

func openSimpleGo(config string) (backends.Backend, string, error) {
	name := BackendSimpleGo
	if config == "" {
		config = defaultSimpleGoConfig
	} else {
		name += ":" + config
	}
	b, err := simplego.New(config)
	if err != nil {
		return nil, "", fmt.Errorf("xla: simplego backend %q: %w", config, err)
	}
	return b, name, nil
}
