fn main() -> tollgate::lambda::Exit {
    tollgate::lambda::run_task_tool(export_tickets::tool)
}
