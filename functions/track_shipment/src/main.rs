fn main() -> tollgate::lambda::Exit {
    tollgate::lambda::run_tool(track_shipment::tool)
}
