//go:build xla

package xla

import (
	"fmt"

	"github.com/gomlx/go-xla/pkg/pjrt"
	"github.com/gomlx/gomlx/backends"
	gomlxxla "github.com/gomlx/gomlx/backends/xla"
)

// xlaPluginAvailable reports the preferred installed PJRT plugin (cuda before
// cpu). GoMLX's automatic plugin download is switched off: a server must not
// fetch native code at run time, so plugins have to be installed beforehand
// (PJRT_PLUGIN_LIBRARY_PATH, /usr/local/lib/go-xla or ~/.local/lib/go-xla).
func xlaPluginAvailable() (string, bool) {
	gomlxxla.EnableAutoInstall(false)
	plugins := gomlxxla.GetAvailablePlugins()
	if len(plugins) == 0 {
		return "", false
	}
	return plugins[0], true
}

// newXLABackend opens a PJRT client of the named plugin. A CUDA client takes
// GPU memory as it needs it instead of reserving most of the card up front
// (PJRT's default): several executors, a training job or another process can
// then share one GPU.
func newXLABackend(plugin string) (backends.Backend, error) {
	gomlxxla.EnableAutoInstall(false)
	var opts pjrt.NamedValuesMap
	if plugin == "cuda" {
		opts = pjrt.NamedValuesMap{"preallocate": false}
	}
	b, err := gomlxxla.NewWithOptions(plugin, opts)
	if err != nil {
		return nil, fmt.Errorf("pjrt plugin %q: %w", plugin, err)
	}
	return b, nil
}
