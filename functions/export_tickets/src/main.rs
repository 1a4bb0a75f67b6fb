fn main() -> tollgate::lambda::Exit {
    tollgate::lambda::run_tool(export_tickets::tool)
}
