output "container_definition" {
  description = "The router's container definition: append it to the task definition's container_definitions (jsonencode the list)."
  value       = local.container_definition
}

output "container_name" {
  description = "Name of the router container."
  value       = var.name
}

output "volumes" {
  description = "Volumes to add to the task definition: the shared log volume and the router's data volume (name, and host.sourcePath for EC2 bind mounts). In aws_ecs_task_definition, one `volume` block each."
  value       = local.volumes
}

output "app_mount_points" {
  description = "mountPoints for the application container: the log volume at log_dir, writable."
  value       = [merge(local.log_mount, { readOnly = false })]
}

output "app_depends_on" {
  description = "dependsOn for the application container: start after the router is HEALTHY (and so stop before it)."
  value       = [{ containerName = var.name, condition = "HEALTHY" }]
}

output "iam_policy_json" {
  description = "IAM policy with exactly the permissions the chosen sinks use: attach it to the task role (Fargate) or the instance role (EC2 with instance-profile credentials)."
  value       = module.iam.json
}

output "config" {
  description = "The rendered router config (the LOGFERRY_CONFIG value); check it with `logferry validate`."
  value       = local.config
}
