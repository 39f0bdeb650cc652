//go:build xla

package xla

import (
	"fmt"

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

func newXLABackend(plugin string) (backends.Backend, error) {
	gomlxxla.EnableAutoInstall(false)
	b, err := gomlxxla.New(plugin)
	if err != nil {
		return nil, fmt.Errorf("pjrt plugin %q: %w", plugin, err)
	}
	return b, nil
}
