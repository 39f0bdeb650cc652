package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strings"

	"github.com/gofiber/fiber/v2"

	"github.com/sooserve/sooserve/adapters"
)

// AdapterModels serves a base model and the adapters of a registry: the
// "model" of a request names the base or an adapter (an unknown name is a
// 404, never the base). Each request resolves the adapter once and keeps
// that version to its end, so a replacement never mixes versions within a
// request.
type AdapterModels struct {
	Base     *Base
	Registry *adapters.Registry
}

// Resolve implements Models.
func (m *AdapterModels) Resolve(ctx context.Context, name string) (Target, error) {
	if name == m.Base.ID {
		return Target{ID: name, Base: m.Base}, nil
	}
	a, _, err := m.Registry.Acquire(ctx, name)
	if errors.Is(err, adapters.ErrNotFound) {
		return Target{}, fmt.Errorf("%w: %w", ErrModelNotFound, err)
	}
	if err != nil {
		return Target{}, err
	}
	return Target{ID: name, Base: m.Base, Adapter: a}, nil
}

// List implements Models: the base, then every adapter with the base as
// parent.
func (m *AdapterModels) List(ctx context.Context) []ModelInfo {
	out := []ModelInfo{{ID: m.Base.ID, Created: m.Base.Created, Base: m.Base}}
	for _, rec := range m.Registry.List(ctx) {
		out = append(out, ModelInfo{ID: rec.Name, Parent: m.Base.ID, Created: rec.Created, Base: m.Base})
	}
	return out
}

// AdapterRegistry returns the registry (the adapter routes find it here).
func (m *AdapterModels) AdapterRegistry() *adapters.Registry { return m.Registry }

// MountAdapters registers the adapter routes of DESIGN §3 under /v1:
//
//	POST   /v1/adapters               multipart upload (?replace=true replaces in place)
//	GET    /v1/adapters               list
//	GET    /v1/adapters/{name}        one record
//	GET    /v1/adapters/{name}/download  the PEFT files as a tar
//	DELETE /v1/adapters/{name}
//	POST   /v1/load_lora_adapter      vLLM: {"lora_name","lora_path","load_inplace"}
//	POST   /v1/unload_lora_adapter    vLLM: {"lora_name"}
//
// They answer 404 while the installed Models is not an AdapterModels.
func (s *Server) MountAdapters() {
	r := s.app.Group("/v1")
	r.Post("/adapters", s.uploadAdapter)
	r.Get("/adapters", s.listAdapters)
	r.Get("/adapters/:name/download", s.downloadAdapter)
	r.Get("/adapters/:name", s.getAdapter)
	r.Delete("/adapters/:name", s.deleteAdapter)
	r.Post("/load_lora_adapter", s.loadLoRA)
	r.Post("/unload_lora_adapter", s.unloadLoRA)
}

// registry returns the adapter registry of the installed models.
func (s *Server) registry() (*adapters.Registry, error) {
	ms := s.models.Load()
	if ms == nil || !s.ready.Load() {
		return nil, Unavailable("model_loading", "the model is still loading")
	}
	if rs, ok := (*ms).(interface{ AdapterRegistry() *adapters.Registry }); ok {
		return rs.AdapterRegistry(), nil
	}
	return nil, NotFound("", "adapters_disabled", "this server does not serve adapters")
}

// adapterError maps the adapters package's typed errors to API errors.
func adapterError(err error, param string) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, adapters.ErrNotFound):
		return &Error{Status: http.StatusNotFound, Type: TypeNotFound, Param: param, Code: "adapter_not_found", Message: trimPrefix(err), Err: err}
	case errors.Is(err, adapters.ErrExists):
		return &Error{Status: http.StatusConflict, Type: TypeConflict, Param: param, Code: "adapter_exists", Message: trimPrefix(err), Err: err}
	case errors.Is(err, adapters.ErrTooLarge):
		return &Error{Status: http.StatusRequestEntityTooLarge, Type: TypeTooLarge, Code: "adapter_too_large", Message: trimPrefix(err), Err: err}
	case errors.Is(err, adapters.ErrInvalid):
		return &Error{Status: http.StatusBadRequest, Type: TypeInvalidRequest, Param: param, Code: "invalid_adapter", Message: trimPrefix(err), Err: err}
	}
	return fmt.Errorf("adapters: %w", err)
}

func trimPrefix(err error) string { return strings.TrimPrefix(err.Error(), "adapters: ") }

// uploadAdapter is POST /v1/adapters.
func (s *Server) uploadAdapter(c *fiber.Ctx) error {
	reg, err := s.registry()
	if err != nil {
		return err
	}
	mt, params, err := mime.ParseMediaType(c.Get(fiber.HeaderContentType))
	if err != nil || mt != fiber.MIMEMultipartForm {
		return Invalid("", "POST /v1/adapters takes multipart/form-data with a field %q and the parts %q and %q",
			adapters.FieldName, adapters.ConfigFile, adapters.WeightsFile)
	}
	replace := c.QueryBool("replace", false)
	up, err := adapters.ReadUpload(bytes.NewReader(c.Body()), params["boundary"], reg.Limits())
	if err != nil {
		return adapterError(err, "")
	}
	_, getErr := reg.Get(c.UserContext(), up.Name)
	rec, err := reg.Put(c.UserContext(), up.Name, up.Files, replace)
	if err != nil {
		return adapterError(err, "name")
	}
	status := fiber.StatusCreated // 200 when an existing adapter was replaced
	if replace && getErr == nil {
		status = fiber.StatusOK
	}
	return c.Status(status).JSON(rec)
}

// listAdapters is GET /v1/adapters.
func (s *Server) listAdapters(c *fiber.Ctx) error {
	reg, err := s.registry()
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"object": "list", "data": reg.List(c.UserContext())})
}

// getAdapter is GET /v1/adapters/{name}.
func (s *Server) getAdapter(c *fiber.Ctx) error {
	reg, err := s.registry()
	if err != nil {
		return err
	}
	rec, err := reg.Get(c.UserContext(), c.Params("name"))
	if err != nil {
		return adapterError(err, "name")
	}
	return c.JSON(rec)
}

// downloadAdapter is GET /v1/adapters/{name}/download: a tar of the PEFT
// files, as uploaded.
func (s *Server) downloadAdapter(c *fiber.Ctx) error {
	reg, err := s.registry()
	if err != nil {
		return err
	}
	rec, files, err := reg.Files(c.UserContext(), c.Params("name"))
	if err != nil {
		return adapterError(err, "name")
	}
	var b bytes.Buffer
	if err := adapters.WriteTar(&b, rec, files); err != nil {
		return err
	}
	c.Set(fiber.HeaderContentType, "application/x-tar")
	c.Set(fiber.HeaderContentDisposition, fmt.Sprintf(`attachment; filename="%s.tar"`, rec.Name))
	c.Set("X-Adapter-Sha256", rec.SHA256)
	return c.Send(b.Bytes())
}

// deleteAdapter is DELETE /v1/adapters/{name}.
func (s *Server) deleteAdapter(c *fiber.Ctx) error {
	reg, err := s.registry()
	if err != nil {
		return err
	}
	name := strings.Clone(c.Params("name"))
	if err := reg.Delete(c.UserContext(), name); err != nil {
		return adapterError(err, "name")
	}
	return c.JSON(fiber.Map{"id": name, "object": "adapter", "deleted": true})
}

// loadLoRARequest is vLLM's load_lora_adapter body.
type loadLoRARequest struct {
	Name    string `json:"lora_name"`
	Path    string `json:"lora_path"`
	Inplace bool   `json:"load_inplace"`
}

// loadLoRA is vLLM's POST /v1/load_lora_adapter: registers the PEFT
// directory lora_path (on the server's machine) as lora_name; with
// load_inplace an existing adapter is replaced. 200 once it is live.
func (s *Server) loadLoRA(c *fiber.Ctx) error {
	reg, err := s.registry()
	if err != nil {
		return err
	}
	var req loadLoRARequest
	if err := decodeJSON(c.Body(), &req); err != nil {
		return err
	}
	if req.Name == "" || req.Path == "" {
		return Invalid("lora_name", "lora_name and lora_path are required")
	}
	rec, err := reg.PutDir(c.UserContext(), req.Name, req.Path, req.Inplace)
	if err != nil {
		return adapterError(err, "lora_name")
	}
	return c.JSON(rec)
}

// unloadLoRA is vLLM's POST /v1/unload_lora_adapter: the adapter is
// deleted and dropped from memory (requests running on it finish).
func (s *Server) unloadLoRA(c *fiber.Ctx) error {
	reg, err := s.registry()
	if err != nil {
		return err
	}
	var req struct {
		Name string `json:"lora_name"`
	}
	if err := decodeJSON(c.Body(), &req); err != nil {
		return err
	}
	if req.Name == "" {
		return Invalid("lora_name", "lora_name is required")
	}
	if err := reg.Delete(c.UserContext(), req.Name); err != nil {
		return adapterError(err, "lora_name")
	}
	return c.JSON(fiber.Map{"id": req.Name, "object": "adapter", "deleted": true})
}
