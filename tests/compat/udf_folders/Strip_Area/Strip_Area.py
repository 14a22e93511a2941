# A UDF file as the Fused catalogue writes them: `fused` is provided by the runtime.
# ruff: noqa: F821, B006
@fused.udf
def udf(bounds: fused.types.Bounds = [-0.113, 51.503, -0.099, 51.513], n: int = 2):
    import shapely

    @fused.cache
    def area(box_bounds):
        return shapely.box(*box_bounds).area

    @fused.udf
    def strip(bounds: fused.types.Bounds = None):
        import shapely

        return shapely.box(*bounds).area

    minx, miny, maxx, maxy = bounds
    step = (maxx - minx) / n
    strips = [[minx + i * step, miny, minx + (i + 1) * step, maxy] for i in range(n)]
    parts = fused.submit(strip, strips, engine="local")
    return {
        "area": round(area(bounds), 12),
        "parts": round(float(parts["result"].sum()), 12),
        "bounds": [round(v, 9) for v in bounds],
    }
