// Readiness probe for the test Kafka broker (tests/services/kafka.sh). Run with the Java 17
// source launcher, no build step:
//
//   java -cp '<kafka lib>/*' KafkaReady.java [BOOTSTRAP [WAIT_SECONDS]]
//
// Sends real requests (DescribeCluster, then Metadata via listTopics) and exits 0 once the broker
// answers both with at least one live broker. With WAIT_SECONDS > 0 it keeps retrying until that
// deadline (one JVM for the whole wait); with 0 (the default) it makes a single attempt.
// Prints one line: the cluster summary on success, the last error on failure.

import java.time.Duration;
import java.util.Collection;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterOptions;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.ListTopicsOptions;
import org.apache.kafka.common.Node;

public class KafkaReady {
    public static void main(String[] args) throws Exception {
        String bootstrap = args.length > 0 ? args[0] : "127.0.0.1:19092";
        long waitMs = args.length > 1 ? Long.parseLong(args[1]) * 1000L : 0L;
        long deadline = System.currentTimeMillis() + waitMs;
        int attemptMs = 4000;

        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.CLIENT_ID_CONFIG, "pillowtop-kafka-ready");
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, attemptMs);
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, attemptMs);
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MS_CONFIG, 100);
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, 500);
        props.put(AdminClientConfig.RETRY_BACKOFF_MS_CONFIG, 100);

        int code = 1;
        String last = "no attempt made";
        Admin admin = Admin.create(props);
        try {
            while (true) {
                try {
                    DescribeClusterResult cluster =
                            admin.describeCluster(new DescribeClusterOptions().timeoutMs(attemptMs));
                    Collection<Node> nodes = cluster.nodes().get(attemptMs, TimeUnit.MILLISECONDS);
                    String clusterId = cluster.clusterId().get(attemptMs, TimeUnit.MILLISECONDS);
                    Set<String> topics = admin.listTopics(new ListTopicsOptions().timeoutMs(attemptMs).listInternal(true))
                            .names().get(attemptMs, TimeUnit.MILLISECONDS);
                    if (!nodes.isEmpty()) {
                        System.out.printf("kafka ready at %s: cluster %s, %d broker(s), %d topic(s)%n",
                                bootstrap, clusterId, nodes.size(), topics.size());
                        code = 0;
                        break;
                    }
                    last = "metadata lists no live broker yet";
                } catch (ExecutionException e) {
                    last = String.valueOf(e.getCause());
                } catch (java.util.concurrent.TimeoutException e) {
                    last = "request timed out after " + attemptMs + " ms";
                }
                if (System.currentTimeMillis() >= deadline) {
                    System.out.println("kafka not ready at " + bootstrap + ": " + last);
                    break;
                }
                Thread.sleep(500);
            }
        } finally {
            admin.close(Duration.ofSeconds(1));
        }
        System.exit(code);
    }
}
