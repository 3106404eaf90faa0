package goclient

// Configs encoded the way a Nomad agent encodes them: the plugin's hclspec schema (as it sends
// it over gRPC) converted to an hcldec spec, the config (a Go map, as Nomad holds a jobspec's
// or an agent file's `config {}` block) JSON-encoded and decoded with HCL's JSON syntax, the
// resulting cty value msgpack-encoded with go-cty (protocol doc §3). The conversion rules are
// those of Nomad's helper/pluginutils/hclspecutils, written here from the protocol reference
// (Nomad ≥ 1.7's module is not open source and is not used).

import (
	"encoding/json"
	"fmt"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/ext/typeexpr"
	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	hcljson "github.com/hashicorp/hcl/v2/json"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"
	"github.com/zclconf/go-cty/cty/msgpack"

	hclspec "nomad-driver-elide/tests/goclient/pb/hclspec"
)

// literalFuncs: the functions a Literal's expression may call in Nomad.
var literalFuncs = map[string]function.Function{
	"abs": stdlib.AbsoluteFunc, "coalesce": stdlib.CoalesceFunc, "concat": stdlib.ConcatFunc,
	"hasindex": stdlib.HasIndexFunc, "int": stdlib.IntFunc, "jsondecode": stdlib.JSONDecodeFunc,
	"jsonencode": stdlib.JSONEncodeFunc, "length": stdlib.LengthFunc, "lower": stdlib.LowerFunc,
	"max": stdlib.MaxFunc, "min": stdlib.MinFunc, "reverse": stdlib.ReverseFunc,
	"strlen": stdlib.StrlenFunc, "substr": stdlib.SubstrFunc, "upper": stdlib.UpperFunc,
}

// convertSpec turns a wire hclspec into an hcldec spec. Only a direct child of an Object gets
// the attribute's key as its implied name.
func convertSpec(s *hclspec.Spec, implied string) (hcldec.Spec, error) {
	if s == nil {
		return nil, fmt.Errorf("nil spec given")
	}
	name := func(n string) string {
		if n == "" {
			return implied
		}
		return n
	}
	typeOf := func(expr string) (cty.Type, error) {
		e, diags := hclsyntax.ParseExpression([]byte(expr), "type", hcl.InitialPos)
		if diags.HasErrors() {
			return cty.NilType, fmt.Errorf("type %q: %s", expr, diags.Error())
		}
		t, diags := typeexpr.TypeConstraint(e)
		if diags.HasErrors() {
			return cty.NilType, fmt.Errorf("type %q: %s", expr, diags.Error())
		}
		return t, nil
	}
	switch b := s.Block.(type) {
	case *hclspec.Spec_Object:
		out := hcldec.ObjectSpec{}
		for key, child := range b.Object.GetAttributes() {
			c, err := convertSpec(child, key)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", key, err)
			}
			out[key] = c
		}
		return out, nil
	case *hclspec.Spec_Array:
		out := hcldec.TupleSpec{}
		for i, child := range b.Array.GetValues() {
			c, err := convertSpec(child, "")
			if err != nil {
				return nil, fmt.Errorf("[%d]: %w", i, err)
			}
			out = append(out, c)
		}
		return out, nil
	case *hclspec.Spec_Attr:
		t, err := typeOf(b.Attr.GetType())
		if err != nil {
			return nil, err
		}
		n := name(b.Attr.GetName())
		if n == "" {
			return nil, fmt.Errorf("missing name in attribute spec")
		}
		return &hcldec.AttrSpec{Name: n, Type: t, Required: b.Attr.GetRequired()}, nil
	case *hclspec.Spec_BlockValue:
		nested, err := convertSpec(b.BlockValue.GetNested(), "")
		if err != nil {
			return nil, err
		}
		return &hcldec.BlockSpec{TypeName: name(b.BlockValue.GetName()), Nested: nested,
			Required: b.BlockValue.GetRequired()}, nil
	case *hclspec.Spec_BlockAttrs:
		t, err := typeOf(b.BlockAttrs.GetType())
		if err != nil {
			return nil, err
		}
		return &hcldec.BlockAttrsSpec{TypeName: name(b.BlockAttrs.GetName()), ElementType: t,
			Required: b.BlockAttrs.GetRequired()}, nil
	case *hclspec.Spec_BlockList:
		nested, err := convertSpec(b.BlockList.GetNested(), "")
		if err != nil {
			return nil, err
		}
		return &hcldec.BlockListSpec{TypeName: name(b.BlockList.GetName()), Nested: nested,
			MinItems: int(b.BlockList.GetMinItems()), MaxItems: int(b.BlockList.GetMaxItems())}, nil
	case *hclspec.Spec_BlockSet:
		nested, err := convertSpec(b.BlockSet.GetNested(), "")
		if err != nil {
			return nil, err
		}
		return &hcldec.BlockSetSpec{TypeName: name(b.BlockSet.GetName()), Nested: nested,
			MinItems: int(b.BlockSet.GetMinItems()), MaxItems: int(b.BlockSet.GetMaxItems())}, nil
	case *hclspec.Spec_BlockMap:
		if len(b.BlockMap.GetLabels()) == 0 {
			return nil, fmt.Errorf("block map %q has no labels", b.BlockMap.GetName())
		}
		nested, err := convertSpec(b.BlockMap.GetNested(), "")
		if err != nil {
			return nil, err
		}
		return &hcldec.BlockMapSpec{TypeName: name(b.BlockMap.GetName()),
			LabelNames: b.BlockMap.GetLabels(), Nested: nested}, nil
	case *hclspec.Spec_Default:
		primary, err := convertSpec(b.Default.GetPrimary(), "")
		if err != nil {
			return nil, fmt.Errorf("default's primary: %w", err)
		}
		def, err := convertSpec(b.Default.GetDefault(), "")
		if err != nil {
			return nil, fmt.Errorf("default's default: %w", err)
		}
		return &hcldec.DefaultSpec{Primary: primary, Default: def}, nil
	case *hclspec.Spec_Literal:
		e, diags := hclsyntax.ParseExpression([]byte(b.Literal.GetValue()), "literal", hcl.InitialPos)
		if diags.HasErrors() {
			return nil, fmt.Errorf("literal %q: %s", b.Literal.GetValue(), diags.Error())
		}
		v, diags := e.Value(&hcl.EvalContext{Functions: literalFuncs})
		if diags.HasErrors() {
			return nil, fmt.Errorf("literal %q: %s", b.Literal.GetValue(), diags.Error())
		}
		return &hcldec.LiteralSpec{Value: v}, nil
	default:
		return nil, fmt.Errorf("unknown spec block %T", s.Block)
	}
}

// EncodeConfig decodes a config map with the plugin's schema and returns its cty msgpack.
func EncodeConfig(schema *hclspec.Spec, config map[string]any) ([]byte, error) {
	spec, err := convertSpec(schema, "")
	if err != nil {
		return nil, fmt.Errorf("the plugin's schema does not convert: %w", err)
	}
	raw, err := json.Marshal(config)
	if err != nil {
		return nil, err
	}
	file, diags := hcljson.Parse(raw, "config.json")
	if diags.HasErrors() {
		return nil, fmt.Errorf("config: %s", diags.Error())
	}
	val, diags := hcldec.Decode(file.Body, spec, &hcl.EvalContext{Functions: literalFuncs})
	if diags.HasErrors() {
		return nil, fmt.Errorf("decoding the config with the plugin's schema: %s", diags.Error())
	}
	return msgpack.Marshal(val, val.Type())
}
