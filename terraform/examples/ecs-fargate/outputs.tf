output "bucket_name" {
  description = "Where the logs land (under logs/<cluster>/YYYY/MM/DD/HH/)."
  value       = module.destinations.bucket_name
}

output "log_group_name" {
  description = "The CloudWatch log group the router writes to (streams app/<task id>)."
  value       = module.destinations.log_group_name
}

output "cluster_name" {
  description = "The ECS cluster."
  value       = aws_ecs_cluster.this.name
}

output "task_definition_arn" {
  description = "The task definition (app + router)."
  value       = aws_ecs_task_definition.app.arn
}

output "router_config" {
  description = "The router config rendered into LOGFERRY_CONFIG."
  value       = module.logferry.config
}

output "glue_database_name" {
  description = "Glue database for Athena (tables logs and log_index, and logs_parquet with the compactor)."
  value       = module.destinations.glue_database_name
}

output "compact_prefix" {
  description = "Where the compactor writes Parquet (empty without the indexer)."
  value       = module.destinations.compact_prefix
}
