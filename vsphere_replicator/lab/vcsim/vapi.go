package main

// The vAPI JSON-RPC 2.0 endpoint, POST /api, as the vSphere Automation SDK
// (vmware-vcenter, vmware-vapi-runtime) calls it. vcsim serves tagging only
// in the older REST style under /rest, so every operation here is carried
// out through that handler: /rest and /api share one store of sessions,
// categories, tags and attachments.
//
// Wire format (one request per POST):
//
//	{"jsonrpc": "2.0", "method": "invoke", "id": "7",
//	 "params": {"serviceId": "com.vmware.cis.tagging.tag", "operationId": "get",
//	            "input": {"STRUCTURE": {"operation-input": {"tag_id": "urn:…"}}},
//	            "ctx": {"appCtx": {…}, "securityCtx": {"schemeId": "…", …}}}}
//
// The answer is {"jsonrpc": "2.0", "id": "7", "result": {"output": V}} or
// {"result": {"error": {"ERROR": {"com.vmware.vapi.std.errors.not_found": {…}}}}},
// always with HTTP 200. Values: structures {"STRUCTURE": {name: {fields}}},
// optionals {"OPTIONAL": v-or-null}, secrets {"SECRET": "…"}, lists as JSON
// arrays, strings, numbers and booleans as themselves, void as null.

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	apiPath          = "/api"
	restSessionPath  = "/rest/com/vmware/cis/session"
	vapiSessionKey   = "vmware-api-session-id"
	schemeSessionID  = "com.vmware.vapi.std.security.session_id"
	schemeUserPass   = "com.vmware.vapi.std.security.user_pass"
	maxAPIBody       = 1 << 20
	rpcParseError    = -32700
	rpcInvalidReq    = -32600
	rpcNoMethod      = -32601
	rpcInvalidParams = -32602
	rpcBadOperation  = -31001
)

// credentialsOK compares a user name and password with the lab's login in
// constant time.
func (l *lab) credentialsOK(user, password string) bool {
	u := subtle.ConstantTimeCompare([]byte(user), []byte(l.cfg.user))
	p := subtle.ConstantTimeCompare([]byte(password), []byte(l.cfg.password))
	return u&p == 1
}

// guardRESTLogin refuses a /rest session for credentials other than the
// lab's: vcsim alone accepts any non-empty user name and password.
func (l *lab) guardRESTLogin(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodPost || r.URL.Path != restSessionPath || r.URL.Query().Get("~action") != "" {
		return false
	}
	user, password, ok := r.BasicAuth()
	if ok && l.credentialsOK(user, password) {
		return false
	}
	w.Header().Set("WWW-Authenticate", `Basic realm="VMware HTTP server"`)
	w.WriteHeader(http.StatusUnauthorized)
	return true
}

type rpcRequest struct {
	JSONRPC string          `json:"jsonrpc"`
	Method  string          `json:"method"`
	ID      json.RawMessage `json:"id"`
	Params  *struct {
		ServiceID   string          `json:"serviceId"`
		OperationID string          `json:"operationId"`
		Input       json.RawMessage `json:"input"`
		Ctx         struct {
			SecurityCtx map[string]interface{} `json:"securityCtx"`
		} `json:"ctx"`
	} `json:"params"`
}

type rpcError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// serveAPI answers one JSON-RPC request. Nothing of the request body is
// logged: the security context may hold a password.
func (l *lab) serveAPI(w http.ResponseWriter, r *http.Request, rest http.Handler) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxAPIBody+1))
	_ = r.Body.Close()
	var req rpcRequest
	switch {
	case err != nil || len(body) > maxAPIBody:
		writeRPC(w, nil, nil, &rpcError{rpcInvalidReq, "Invalid Request."})
		return
	case json.Unmarshal(body, &req) != nil:
		writeRPC(w, nil, nil, &rpcError{rpcParseError, "Parse error."})
		return
	case req.JSONRPC != "2.0" || req.Params == nil || len(req.ID) == 0:
		writeRPC(w, nil, nil, &rpcError{rpcInvalidReq, "Invalid Request."})
		return
	case req.Method != "invoke":
		writeRPC(w, req.ID, nil, &rpcError{rpcNoMethod, "Method not found."})
		return
	}
	p := req.Params
	if s := r.Header.Get("vapi-service"); s != "" && s != p.ServiceID {
		writeRPC(w, req.ID, nil, &rpcError{rpcBadOperation, "Mismatching service identifier in HTTP header and payload"})
		return
	}
	if o := r.Header.Get("vapi-operation"); o != "" && o != p.OperationID {
		writeRPC(w, req.ID, nil, &rpcError{rpcBadOperation, "Mismatching operation identifier in HTTP header and payload"})
		return
	}
	var raw interface{}
	if len(p.Input) > 0 && json.Unmarshal(p.Input, &raw) != nil {
		writeRPC(w, req.ID, nil, &rpcError{rpcInvalidParams, "Invalid params."})
		return
	}
	in, _ := plainValue(raw).(map[string]interface{})
	if in == nil {
		in = map[string]interface{}{}
	}
	call := &apiCall{lab: l, rest: rest, ctx: r.Context()}
	call.authenticate(r, p.Ctx.SecurityCtx)
	out, verr := call.invoke(p.ServiceID, p.OperationID, in)
	if verr != nil {
		writeRPC(w, req.ID, map[string]interface{}{"error": verr.value()}, nil)
		return
	}
	writeRPC(w, req.ID, map[string]interface{}{"output": out}, nil)
}

func writeRPC(w http.ResponseWriter, id json.RawMessage, result interface{}, rerr *rpcError) {
	if len(id) == 0 || rerr != nil && (rerr.Code == rpcParseError || rerr.Code == rpcInvalidReq) {
		id = json.RawMessage("null")
	}
	msg := map[string]interface{}{"jsonrpc": "2.0", "id": id}
	if rerr != nil {
		msg["error"] = rerr
	} else {
		msg["result"] = result
	}
	data, err := json.Marshal(msg)
	if err != nil {
		http.Error(w, "cannot encode the answer", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(data)
}

// plainValue strips the vAPI type wrappers from a decoded input value:
// structures become maps of their fields, optionals their value or nil,
// secrets their string.
func plainValue(v interface{}) interface{} {
	switch x := v.(type) {
	case []interface{}:
		out := make([]interface{}, len(x))
		for i := range x {
			out[i] = plainValue(x[i])
		}
		return out
	case map[string]interface{}:
		if len(x) != 1 {
			return x
		}
		for kind, inner := range x {
			switch kind {
			case "STRUCTURE", "ERROR":
				named, ok := inner.(map[string]interface{})
				if !ok || len(named) != 1 {
					return nil
				}
				for _, fields := range named {
					f, _ := fields.(map[string]interface{})
					out := map[string]interface{}{}
					for k, fv := range f {
						out[k] = plainValue(fv)
					}
					return out
				}
			case "OPTIONAL":
				if inner == nil {
					return nil
				}
				return plainValue(inner)
			case "SECRET", "BINARY":
				return inner
			}
		}
		return x
	}
	return v
}

// Encoders for answers.

func vStruct(name string, fields map[string]interface{}) map[string]interface{} {
	return map[string]interface{}{"STRUCTURE": map[string]interface{}{name: fields}}
}

func vOptional(v interface{}) map[string]interface{} { return map[string]interface{}{"OPTIONAL": v} }

func vStrings(list []string) []interface{} {
	out := make([]interface{}, 0, len(list))
	for _, s := range list {
		out = append(out, s)
	}
	return out
}

func vDynamicID(o restObject) map[string]interface{} {
	return vStruct("com.vmware.vapi.std.dynamic_ID", map[string]interface{}{"type": o.Type, "id": o.ID})
}

func vDynamicIDs(list []restObject) []interface{} {
	out := make([]interface{}, 0, len(list))
	for _, o := range list {
		out = append(out, vDynamicID(o))
	}
	return out
}

func vTimestamp(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

// vapiErr is one of the standard errors (com.vmware.vapi.std.errors.*).
type vapiErr struct {
	kind  string // "not_found", "unauthenticated", …
	msgID string
	msg   string
	args  []string
}

func newVapiErr(kind, msgID string, format string, args ...string) *vapiErr {
	values := make([]interface{}, len(args))
	for i, a := range args {
		values[i] = a
	}
	return &vapiErr{kind: kind, msgID: msgID, msg: fmt.Sprintf(format, values...), args: args}
}

func (e *vapiErr) value() map[string]interface{} {
	message := vStruct("com.vmware.vapi.std.localizable_message", map[string]interface{}{
		"id": e.msgID, "default_message": e.msg, "args": vStrings(e.args),
		"params": vOptional(nil), "localized": vOptional(nil),
	})
	fields := map[string]interface{}{
		"messages":   []interface{}{message},
		"data":       vOptional(nil),
		"error_type": vOptional(strings.ToUpper(e.kind)),
	}
	if e.kind == "unauthenticated" {
		fields["challenge"] = vOptional(`Basic realm="VMware HTTP server"`)
	}
	return map[string]interface{}{"ERROR": map[string]interface{}{"com.vmware.vapi.std.errors." + e.kind: fields}}
}

func notFound(what, id string) *vapiErr {
	return newVapiErr("not_found", "com.vmware.cis.tagging.objectNotFound", "%s %s not found", what, id)
}

func invalidArgument(format string, args ...string) *vapiErr {
	return newVapiErr("invalid_argument", "vapi.method.input.invalid", format, args...)
}

func unauthenticated() *vapiErr {
	return newVapiErr("unauthenticated", "vapi.security.authentication.invalid", "Unable to authenticate user")
}

// apiCall is one /api invocation, carried out against vcsim's /rest handler.
type apiCall struct {
	lab      *lab
	rest     http.Handler
	ctx      context.Context
	session  string
	user     string
	password string
	hasLogin bool
}

// authenticate reads the caller's identity as the vAPI runtime sends it:
// the vmware-api-session-id header (which wins), or the security context
// (a session id, or a user name and password), or HTTP basic auth.
func (c *apiCall) authenticate(r *http.Request, sec map[string]interface{}) {
	text := func(key string) string { s, _ := sec[key].(string); return s }
	switch text("schemeId") {
	case schemeSessionID:
		c.session = text("sessionId")
	case schemeUserPass:
		c.user, c.password, c.hasLogin = text("userName"), text("password"), true
	}
	if id := r.Header.Get(vapiSessionKey); id != "" {
		c.session = id
	}
	if !c.hasLogin {
		c.user, c.password, c.hasLogin = r.BasicAuth()
	}
}

type apiOperation func(c *apiCall, in map[string]interface{}) (interface{}, *vapiErr)

// apiServices is what /api serves: service id -> operation id -> handler.
var apiServices = map[string]map[string]apiOperation{
	"com.vmware.cis.session": {
		"create": sessionCreate,
		"delete": sessionDelete,
		"get":    sessionGet,
	},
	"com.vmware.cis.tagging.category": {
		"list":   categoryList,
		"get":    categoryGet,
		"create": categoryCreate,
	},
	"com.vmware.cis.tagging.tag": {
		"list":                   tagList,
		"get":                    tagGet,
		"create":                 tagCreate,
		"list_tags_for_category": tagListForCategory,
	},
	"com.vmware.cis.tagging.tag_association": {
		"attach":                        associationAttach,
		"detach":                        associationDetach,
		"list_attached_tags":            associationListTags,
		"list_attached_objects":         associationListObjects,
		"list_attached_objects_on_tags": associationListObjectsOnTags,
		"list_attached_tags_on_objects": associationListTagsOnObjects,
	},
}

func (c *apiCall) invoke(service, operation string, in map[string]interface{}) (interface{}, *vapiErr) {
	ops, ok := apiServices[service]
	if !ok {
		return nil, newVapiErr("operation_not_found", "vapi.method.input.invalid.interface", "Invalid interface %s", service)
	}
	op, ok := ops[operation]
	if !ok {
		return nil, newVapiErr("operation_not_found", "vapi.method.input.invalid.method", "Invalid method %s", service+"."+operation)
	}
	if !(service == "com.vmware.cis.session" && operation == "create") && c.session == "" {
		return nil, unauthenticated()
	}
	return op(c, in)
}

// restCall runs one request against vcsim's /rest handler and decodes the
// "value" of its answer into out. what names the object for a not-found error.
func (c *apiCall) restCall(method, target string, body interface{}, out interface{}, what, id string) *vapiErr {
	var reader io.Reader = http.NoBody
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return invalidArgument("cannot encode the request: %s", err.Error())
		}
		reader = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(c.ctx, method, "https://127.0.0.1/rest"+target, reader)
	if err != nil {
		return invalidArgument("invalid request: %s", err.Error())
	}
	req.Header.Set("Content-Type", "application/json")
	if c.session != "" {
		req.Header.Set(vapiSessionKey, c.session)
	}
	if target == "/com/vmware/cis/session" && method == http.MethodPost {
		req.SetBasicAuth(c.user, c.password)
		req.Header.Set("vmware-use-header-authn", "true") // the id is the answer; no cookie
	}
	rec := httptest.NewRecorder()
	c.rest.ServeHTTP(rec, req)
	switch {
	case rec.Code == http.StatusUnauthorized:
		return unauthenticated()
	case rec.Code == http.StatusNotFound:
		return notFound(what, id)
	case rec.Code == http.StatusBadRequest:
		var problem struct {
			Type string `json:"type"`
		}
		_ = json.Unmarshal(rec.Body.Bytes(), &problem)
		if kind := strings.TrimPrefix(problem.Type, "com.vmware.vapi.std.errors."); kind != problem.Type && kind != "" {
			return newVapiErr(kind, problem.Type, "%s %s: %s", what, id, strings.ReplaceAll(kind, "_", " "))
		}
		return invalidArgument("invalid input for %s %s", what, id)
	case rec.Code != http.StatusOK:
		return newVapiErr("internal_server_error", "vapi.lab.rest.failed", "the lab's tagging store answered HTTP %s", fmt.Sprint(rec.Code))
	}
	if out == nil {
		return nil
	}
	var envelope struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &envelope); err != nil || len(envelope.Value) == 0 {
		return nil // no value: out keeps its zero value (an empty list)
	}
	if err := json.Unmarshal(envelope.Value, out); err != nil {
		return newVapiErr("internal_server_error", "vapi.lab.rest.failed", "cannot decode the tagging store's answer: %s", err.Error())
	}
	return nil
}

// Input helpers: each refuses a missing or mistyped field with invalid_argument.

func inString(in map[string]interface{}, key string) (string, *vapiErr) {
	s, ok := in[key].(string)
	if !ok || s == "" {
		return "", invalidArgument("%s is required", key)
	}
	return s, nil
}

// inID is an identifier that goes into a /rest path: one path segment.
func inID(in map[string]interface{}, key, what string) (string, *vapiErr) {
	id, err := inString(in, key)
	if err != nil {
		return "", err
	}
	if strings.ContainsAny(id, "/?#") {
		return "", notFound(what, id)
	}
	return id, nil
}

func inStruct(in map[string]interface{}, key string) (map[string]interface{}, *vapiErr) {
	m, ok := in[key].(map[string]interface{})
	if !ok {
		return nil, invalidArgument("%s is required", key)
	}
	return m, nil
}

func inStrings(in map[string]interface{}, key string) ([]string, *vapiErr) {
	list, ok := in[key].([]interface{})
	if !ok && in[key] != nil {
		return nil, invalidArgument("%s must be a list", key)
	}
	out := []string{}
	for _, v := range list {
		s, ok := v.(string)
		if !ok {
			return nil, invalidArgument("%s must be a list of strings", key)
		}
		out = append(out, s)
	}
	return out, nil
}

func inObject(in map[string]interface{}, key string) (restObject, *vapiErr) {
	m, err := inStruct(in, key)
	if err != nil {
		return restObject{}, err
	}
	typ, err := inString(m, "type")
	if err != nil {
		return restObject{}, err
	}
	id, err := inString(m, "id")
	if err != nil {
		return restObject{}, err
	}
	return restObject{Type: typ, ID: id}, nil
}

func inObjects(in map[string]interface{}, key string) ([]restObject, *vapiErr) {
	list, ok := in[key].([]interface{})
	if !ok {
		return nil, invalidArgument("%s must be a list", key)
	}
	var out []restObject
	for _, v := range list {
		m, _ := v.(map[string]interface{})
		o, err := inObject(map[string]interface{}{key: m}, key)
		if err != nil {
			return nil, err
		}
		out = append(out, o)
	}
	return out, nil
}

// What vcsim's /rest handler stores, as it writes it.

type restCategory struct {
	ID              string   `json:"id"`
	Name            string   `json:"name"`
	Description     string   `json:"description"`
	Cardinality     string   `json:"cardinality"`
	AssociableTypes []string `json:"associable_types"`
	UsedBy          []string `json:"used_by"`
}

type restTag struct {
	ID          string   `json:"id"`
	CategoryID  string   `json:"category_id"`
	Name        string   `json:"name"`
	Description string   `json:"description"`
	UsedBy      []string `json:"used_by"`
}

type restObject struct {
	Type string `json:"type"`
	ID   string `json:"id"`
}

func tagPath(id string) string { return "/com/vmware/cis/tagging/tag/id:" + url.PathEscape(id) }
func categoryPath(id string) string {
	return "/com/vmware/cis/tagging/category/id:" + url.PathEscape(id)
}

const associationPath = "/com/vmware/cis/tagging/tag-association"

// Session.

func sessionCreate(c *apiCall, _ map[string]interface{}) (interface{}, *vapiErr) {
	if !c.hasLogin || !c.lab.credentialsOK(c.user, c.password) {
		return nil, unauthenticated()
	}
	c.session = ""
	var id string
	if err := c.restCall(http.MethodPost, "/com/vmware/cis/session", nil, &id, "session", ""); err != nil {
		return nil, err
	}
	return map[string]interface{}{"SECRET": id}, nil
}

func sessionDelete(c *apiCall, _ map[string]interface{}) (interface{}, *vapiErr) {
	return nil, c.restCall(http.MethodDelete, "/com/vmware/cis/session", nil, nil, "session", "")
}

func sessionGet(c *apiCall, _ map[string]interface{}) (interface{}, *vapiErr) {
	var s struct {
		User         string    `json:"user"`
		Created      time.Time `json:"created_time"`
		LastAccessed time.Time `json:"last_accessed_time"`
	}
	if err := c.restCall(http.MethodPost, "/com/vmware/cis/session?~action=get", nil, &s, "session", ""); err != nil {
		return nil, err
	}
	return vStruct("com.vmware.cis.session.info", map[string]interface{}{
		"user": s.User, "created_time": vTimestamp(s.Created), "last_accessed_time": vTimestamp(s.LastAccessed),
	}), nil
}

// Categories.

func categoryList(c *apiCall, _ map[string]interface{}) (interface{}, *vapiErr) {
	var ids []string
	if err := c.restCall(http.MethodGet, "/com/vmware/cis/tagging/category", nil, &ids, "category", ""); err != nil {
		return nil, err
	}
	return vStrings(ids), nil
}

func (c *apiCall) category(id string) (*restCategory, *vapiErr) {
	var cat restCategory
	if err := c.restCall(http.MethodGet, categoryPath(id), nil, &cat, "Category", id); err != nil {
		return nil, err
	}
	return &cat, nil
}

func categoryGet(c *apiCall, in map[string]interface{}) (interface{}, *vapiErr) {
	id, err := inID(in, "category_id", "Category")
	if err != nil {
		return nil, err
	}
	cat, err := c.category(id)
	if err != nil {
		return nil, err
	}
	return vStruct("com.vmware.cis.tagging.category_model", map[string]interface{}{
		"id": cat.ID, "name": cat.Name, "description": cat.Description, "cardinality": cat.Cardinality,
		"associable_types": vStrings(cat.AssociableTypes), "used_by": vStrings(cat.UsedBy),
	}), nil
}

func categoryCreate(c *apiCall, in map[string]interface{}) (interface{}, *vapiErr) {
	spec, err := inStruct(in, "create_spec")
	if err != nil {
		return nil, err
	}
	name, err := inString(spec, "name")
	if err != nil {
		return nil, err
	}
	cardinality, _ := spec["cardinality"].(string)
	if cardinality != "SINGLE" && cardinality != "MULTIPLE" {
		return nil, invalidArgument("cardinality must be SINGLE or MULTIPLE, got %q", cardinality)
	}
	description, _ := spec["description"].(string)
	types, err := inStrings(spec, "associable_types")
	if err != nil {
		return nil, err
	}
	body := map[string]interface{}{"create_spec": map[string]interface{}{
		"name": name, "description": description, "cardinality": cardinality, "associable_types": types,
	}}
	var id string
	if err := c.restCall(http.MethodPost, "/com/vmware/cis/tagging/category", body, &id, "Category", name); err != nil {
		return nil, err
	}
	return id, nil
}

// Tags.

func tagList(c *apiCall, _ map[string]interface{}) (interface{}, *vapiErr) {
	var ids []string
	if err := c.restCall(http.MethodGet, "/com/vmware/cis/tagging/tag", nil, &ids, "tag", ""); err != nil {
		return nil, err
	}
	return vStrings(ids), nil
}

func (c *apiCall) tag(id string) (*restTag, *vapiErr) {
	var t restTag
	if err := c.restCall(http.MethodGet, tagPath(id), nil, &t, "Tag", id); err != nil {
		return nil, err
	}
	return &t, nil
}

func tagGet(c *apiCall, in map[string]interface{}) (interface{}, *vapiErr) {
	id, err := inID(in, "tag_id", "Tag")
	if err != nil {
		return nil, err
	}
	t, err := c.tag(id)
	if err != nil {
		return nil, err
	}
	return vStruct("com.vmware.cis.tagging.tag_model", map[string]interface{}{
		"id": t.ID, "category_id": t.CategoryID, "name": t.Name, "description": t.Description,
		"used_by": vStrings(t.UsedBy),
	}), nil
}

func tagCreate(c *apiCall, in map[string]interface{}) (interface{}, *vapiErr) {
	spec, err := inStruct(in, "create_spec")
	if err != nil {
		return nil, err
	}
	name, err := inString(spec, "name")
	if err != nil {
		return nil, err
	}
	categoryID, err := inID(spec, "category_id", "Category")
	if err != nil {
		return nil, err
	}
	if _, err := c.category(categoryID); err != nil { // vcsim would take any category id
		return nil, err
	}
	description, _ := spec["description"].(string)
	body := map[string]interface{}{"create_spec": map[string]interface{}{
		"name": name, "description": description, "category_id": categoryID,
	}}
	var id string
	if err := c.restCall(http.MethodPost, "/com/vmware/cis/tagging/tag", body, &id, "Tag", name); err != nil {
		return nil, err
	}
	return id, nil
}

func tagListForCategory(c *apiCall, in map[string]interface{}) (interface{}, *vapiErr) {
	id, err := inID(in, "category_id", "Category")
	if err != nil {
		return nil, err
	}
	if _, err := c.category(id); err != nil { // vcsim answers an empty list for any id
		return nil, err
	}
	var ids []string
	if err := c.restCall(http.MethodPost, tagPath(id)+"?~action=list-tags-for-category", nil, &ids, "Category", id); err != nil {
		return nil, err
	}
	return vStrings(ids), nil
}

// Tag associations.

// checkAttach applies what vCenter checks and vcsim does not: the object
// exists, the tag's category may be attached to its type, and a SINGLE
// category allows one of its tags per object.
func (c *apiCall) checkAttach(tagID string, obj restObject) *vapiErr {
	t, err := c.tag(tagID)
	if err != nil {
		return err
	}
	ref := types.ManagedObjectReference{Type: obj.Type, Value: obj.ID}
	if len(simulator.Map.All(obj.Type)) > 0 && simulator.Map.Get(ref) == nil {
		return invalidArgument("object %s:%s does not exist", obj.Type, obj.ID)
	}
	cat, err := c.category(t.CategoryID)
	if err != nil {
		return err
	}
	if len(cat.AssociableTypes) > 0 {
		allowed := false
		for _, a := range cat.AssociableTypes {
			allowed = allowed || a == obj.Type || a == "urn:vmomi:"+obj.Type
		}
		if !allowed {
			return invalidArgument("category %s cannot be attached to objects of type %s", cat.Name, obj.Type)
		}
	}
	if cat.Cardinality != "SINGLE" {
		return nil
	}
	var attached []string
	if err := c.restCall(http.MethodPost, associationPath+"?~action=list-attached-tags", map[string]interface{}{"object_id": obj}, &attached, "object", obj.ID); err != nil {
		return err
	}
	for _, other := range attached {
		if other == tagID {
			continue
		}
		if o, err := c.tag(other); err == nil && o.CategoryID == cat.ID {
			return invalidArgument("category %s allows one tag per object; %s already carries %s", cat.Name, obj.ID, o.Name)
		}
	}
	return nil
}

func associationAttach(c *apiCall, in map[string]interface{}) (interface{}, *vapiErr) {
	id, err := inID(in, "tag_id", "Tag")
	if err != nil {
		return nil, err
	}
	obj, err := inObject(in, "object_id")
	if err != nil {
		return nil, err
	}
	if err := c.checkAttach(id, obj); err != nil {
		return nil, err
	}
	return nil, c.restCall(http.MethodPost, associationPath+"/id:"+url.PathEscape(id)+"?~action=attach", map[string]interface{}{"object_id": obj}, nil, "Tag", id)
}

func associationDetach(c *apiCall, in map[string]interface{}) (interface{}, *vapiErr) {
	id, err := inID(in, "tag_id", "Tag")
	if err != nil {
		return nil, err
	}
	obj, err := inObject(in, "object_id")
	if err != nil {
		return nil, err
	}
	return nil, c.restCall(http.MethodPost, associationPath+"/id:"+url.PathEscape(id)+"?~action=detach", map[string]interface{}{"object_id": obj}, nil, "Tag", id)
}

func associationListTags(c *apiCall, in map[string]interface{}) (interface{}, *vapiErr) {
	obj, err := inObject(in, "object_id")
	if err != nil {
		return nil, err
	}
	var ids []string
	if err := c.restCall(http.MethodPost, associationPath+"?~action=list-attached-tags", map[string]interface{}{"object_id": obj}, &ids, "object", obj.ID); err != nil {
		return nil, err
	}
	return vStrings(ids), nil
}

func associationListObjects(c *apiCall, in map[string]interface{}) (interface{}, *vapiErr) {
	id, err := inID(in, "tag_id", "Tag")
	if err != nil {
		return nil, err
	}
	var objs []restObject
	if err := c.restCall(http.MethodPost, associationPath+"/id:"+url.PathEscape(id)+"?~action=list-attached-objects", map[string]interface{}{}, &objs, "Tag", id); err != nil {
		return nil, err
	}
	return vDynamicIDs(objs), nil
}

func associationListObjectsOnTags(c *apiCall, in map[string]interface{}) (interface{}, *vapiErr) {
	ids, err := inStrings(in, "tag_ids")
	if err != nil {
		return nil, err
	}
	var found []struct {
		TagID     string       `json:"tag_id"`
		ObjectIDs []restObject `json:"object_ids"`
	}
	if err := c.restCall(http.MethodPost, associationPath+"?~action=list-attached-objects-on-tags", map[string]interface{}{"tag_ids": ids}, &found, "Tag", ""); err != nil {
		return nil, err
	}
	out := make([]interface{}, 0, len(found))
	for _, f := range found {
		out = append(out, vStruct("com.vmware.cis.tagging.tag_association.tag_to_objects", map[string]interface{}{
			"tag_id": f.TagID, "object_ids": vDynamicIDs(f.ObjectIDs),
		}))
	}
	return out, nil
}

func associationListTagsOnObjects(c *apiCall, in map[string]interface{}) (interface{}, *vapiErr) {
	objs, err := inObjects(in, "object_ids")
	if err != nil {
		return nil, err
	}
	var found []struct {
		ObjectID restObject `json:"object_id"`
		TagIDs   []string   `json:"tag_ids"`
	}
	body := map[string]interface{}{"object_ids": objs}
	if err := c.restCall(http.MethodPost, associationPath+"?~action=list-attached-tags-on-objects", body, &found, "object", ""); err != nil {
		return nil, err
	}
	out := make([]interface{}, 0, len(found))
	for _, f := range found {
		out = append(out, vStruct("com.vmware.cis.tagging.tag_association.object_to_tags", map[string]interface{}{
			"object_id": vDynamicID(f.ObjectID), "tag_ids": vStrings(f.TagIDs),
		}))
	}
	return out, nil
}
