// A one-node Elasticsearch 7.17 for the integration tests, booted without the distribution.
//
// Run by Java 17's single-file source launcher, no build step:
//   java -cp '<lib>/*' EmbeddedSearch.java <path.home> <path.data> <path.logs> <http.port> <transport.port> [key=value ...]
// where <lib> is the runtime closure of tests/services/search/pom.xml. Extra key=value arguments are
// added to (or override) the node settings.
//
// Constructing Node directly (instead of going through Bootstrap) skips jar hell, the security
// manager and the bootstrap checks, which is what a throwaway test node wants. The modules that the
// distribution loads from modules/ are passed as classpath plugins instead; path.home has no
// modules/ or plugins/ folder, so nothing is loaded from disk.
import java.util.Arrays;
import java.util.Collection;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.elasticsearch.Version;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.http.HttpServerTransport;
import org.elasticsearch.index.mapper.MapperExtrasPlugin;
import org.elasticsearch.join.ParentJoinPlugin;
import org.elasticsearch.node.InternalSettingsPreparer;
import org.elasticsearch.node.Node;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.reindex.ReindexPlugin;
import org.elasticsearch.transport.Netty4Plugin;

public class EmbeddedSearch {

    /** Node's plugin-taking constructor is protected; this subclass only exposes it. */
    static final class PluginNode extends Node {
        PluginNode(Environment environment, Collection<Class<? extends Plugin>> plugins) {
            super(environment, plugins, true);
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 5) {
            System.err.println("usage: EmbeddedSearch <path.home> <path.data> <path.logs> <http.port> <transport.port> [key=value ...]");
            System.exit(2);
        }
        Settings.Builder builder = Settings.builder()
            .put("path.home", args[0])
            .put("path.data", args[1])
            .put("path.logs", args[2])
            .put("cluster.name", "pillowtop-tests")
            .put("node.name", "pillowtop-search")
            .put("discovery.type", "single-node")
            .put("network.host", "127.0.0.1")
            .put("http.port", args[3])
            .put("transport.port", args[4])
            .put("http.type", "netty4")
            .put("transport.type", "netty4")
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .put("indices.breaker.total.use_real_memory", false)
            .put("node.processors", 2);
        for (String extra : Arrays.copyOfRange(args, 5, args.length)) {
            int eq = extra.indexOf('=');
            if (eq <= 0) {
                System.err.println("not a key=value setting: " + extra);
                System.exit(2);
            }
            builder.put(extra.substring(0, eq), extra.substring(eq + 1));
        }
        Settings settings = builder.build();

        Environment environment = InternalSettingsPreparer.prepareEnvironment(
            settings, java.util.Collections.emptyMap(), null, () -> settings.get("node.name"));
        List<Class<? extends Plugin>> plugins = List.of(
            Netty4Plugin.class, MapperExtrasPlugin.class, ReindexPlugin.class, ParentJoinPlugin.class);

        Node node = new PluginNode(environment, plugins);
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                node.awaitClose(30, TimeUnit.SECONDS);
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                stopped.countDown();
            }
        }, "embedded-search-shutdown"));

        node.start();
        HttpServerTransport http = node.injector().getInstance(HttpServerTransport.class);
        System.out.println("EmbeddedSearch: elasticsearch " + Version.CURRENT + " listening on http://"
            + http.boundAddress().publishAddress());
        System.out.flush();

        // Node threads are daemons: without this the JVM would exit right after start().
        stopped.await();
    }
}
