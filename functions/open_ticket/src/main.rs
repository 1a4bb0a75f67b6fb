fn main() -> tollgate::lambda::Exit {
    tollgate::lambda::run_tool(open_ticket::tool)
}
