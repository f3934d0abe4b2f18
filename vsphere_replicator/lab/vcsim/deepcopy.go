package main

import "reflect"

// deepCopy returns a copy of v that shares no pointers, slices or maps with
// it. vcsim copies snapshot configs shallowly; a snapshot must own its
// device list so later changes to the VM cannot rewrite history.
func deepCopy[T any](v T) T {
	out := copyValue(reflect.ValueOf(&v).Elem())
	return out.Interface().(T)
}

func copyValue(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Ptr:
		if v.IsNil() {
			return reflect.Zero(v.Type())
		}
		p := reflect.New(v.Type().Elem())
		p.Elem().Set(copyValue(v.Elem()))
		return p
	case reflect.Interface:
		if v.IsNil() {
			return reflect.Zero(v.Type())
		}
		c := copyValue(v.Elem())
		out := reflect.New(v.Type()).Elem()
		out.Set(c)
		return out
	case reflect.Slice:
		if v.IsNil() {
			return reflect.Zero(v.Type())
		}
		s := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		for i := 0; i < v.Len(); i++ {
			s.Index(i).Set(copyValue(v.Index(i)))
		}
		return s
	case reflect.Map:
		if v.IsNil() {
			return reflect.Zero(v.Type())
		}
		m := reflect.MakeMapWithSize(v.Type(), v.Len())
		for _, k := range v.MapKeys() {
			m.SetMapIndex(k, copyValue(v.MapIndex(k)))
		}
		return m
	case reflect.Struct:
		s := reflect.New(v.Type()).Elem()
		for i := 0; i < v.NumField(); i++ {
			if !s.Field(i).CanSet() {
				continue // unexported (e.g. time.Time internals are copied whole below)
			}
			s.Field(i).Set(copyValue(v.Field(i)))
		}
		if v.Type().PkgPath() == "time" {
			s.Set(v)
		}
		return s
	default:
		return v
	}
}
